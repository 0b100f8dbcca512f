// File: tools/discoveryd/http_codec.h
//
// The Boost.Beast side of discoveryd's HTTP handling, without sockets: how the server
// configures its request parser, what it answers when a read fails, how a parsed message
// becomes an HttpRequest and how an HttpResponse goes on the wire. HttpServer's connections
// use exactly these functions around their async reads and writes; the libFuzzer target
// (tests/fuzz/http_fuzz.cc) feeds raw bytes through the same ones.
//
//   std::optional<RequestParser> parser;
//   NewRequestParser(&parser, ParserLimits{});      // the server's limits
//   ... put bytes (Beast's read algorithms, or parser->put) ...
//   if (ec) { if (auto r = ReadErrorResponse(ec, limits)) Send(*r); Close(); }
//   HttpRequest req = ToHttpRequest(parser->release(), remote);
//
// Thread-safety: pure functions.
#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/system/error_code.hpp>
#include <cstddef>
#include <optional>
#include <string>

#include "http_message.h"

namespace discoveryd {

using RequestParser = boost::beast::http::request_parser<boost::beast::http::string_body>;
using BeastRequest = boost::beast::http::request<boost::beast::http::string_body>;
using BeastResponse = boost::beast::http::response<boost::beast::http::string_body>;

struct ParserLimits {
  size_t max_body_bytes = kDefaultMaxBodyBytes;
  size_t max_header_bytes = kDefaultMaxHeaderBytes;
};

// (Re)creates `parser` for the next request of a connection, with `limits`.
void NewRequestParser(std::optional<RequestParser>* parser, const ParserLimits& limits);

// True when the parsed header carries `Expect: 100-continue`: the server answers
// "100 Continue" before reading the body.
bool WantsContinue(const RequestParser& parser);

// What the server answers when reading a request failed with `ec`: 413 for a body over the
// limit, 431 for headers over the limit, 400 for a malformed request (each closes the
// connection). nullopt for end of stream, a request cut short, a reset or a timeout: the
// connection is closed without an answer.
std::optional<HttpResponse> ReadErrorResponse(const boost::system::error_code& ec,
                                              const ParserLimits& limits);

// The handler's view of a complete message (takes its body). `remote` is for logs.
HttpRequest ToHttpRequest(BeastRequest&& message, std::string remote);

// `response` as Beast sends it (Server header, Content-Type, Content-Length, Connection).
BeastResponse ToBeastResponse(HttpResponse response, bool keep_alive);

// The status line and headers (ending in the blank line) of `response` whose body is
// `response.shared_body` (sent after it as is, without a copy): the same fields as
// ToBeastResponse, Content-Length from the shared body.
std::string SharedBodyHead(const HttpResponse& response, bool keep_alive);

}  // namespace discoveryd
