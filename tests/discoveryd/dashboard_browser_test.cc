// The discoveryd dashboard in a real browser: headless Chromium driven over the DevTools
// protocol (a Beast WebSocket client). The page must show instances live from the SSE stream
// (no reload), colour the status tags, filter, drop removed instances, and show a
// "disconnected" banner that goes away when discoveryd is back. A screenshot is saved under
// the build directory as a test artefact.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "gateway_fixture.h"

namespace discovery::testing {
namespace {

namespace beast = boost::beast;
namespace net = boost::asio;
using tcp = net::ip::tcp;

// One DevTools page session over a WebSocket. Calls are synchronous; events are skipped.
class DevTools {
 public:
  static absl::StatusOr<std::unique_ptr<DevTools>> Connect(int port, const std::string& path) {
    std::unique_ptr<DevTools> d(new DevTools());
    beast::error_code ec;
    tcp::endpoint ep(net::ip::make_address("127.0.0.1"), static_cast<uint16_t>(port));
    d->ws_.next_layer().connect(ep, ec);
    if (ec) return absl::UnavailableError("devtools connect: " + ec.message());
    timeval tv = absl::ToTimeval(TimeScale(absl::Seconds(10)));
    ::setsockopt(d->ws_.next_layer().native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    d->ws_.handshake(absl::StrCat("127.0.0.1:", port), path, ec);
    if (ec) return absl::UnavailableError("devtools handshake: " + ec.message());
    return d;
  }

  absl::StatusOr<json> Call(const std::string& method, json params = json::object()) {
    int id = ++next_id_;
    json msg = {{"id", id}, {"method", method}, {"params", std::move(params)}};
    beast::error_code ec;
    ws_.text(true);
    ws_.write(net::buffer(msg.dump()), ec);
    if (ec) return absl::UnavailableError("devtools write: " + ec.message());
    for (;;) {
      beast::flat_buffer buf;
      ws_.read(buf, ec);
      if (ec) return absl::UnavailableError("devtools read: " + ec.message());
      json reply = json::parse(beast::buffers_to_string(buf.data()), nullptr, false);
      if (!reply.is_object() || reply.value("id", 0) != id) continue;  // an event
      if (reply.contains("error")) {
        return absl::InternalError(method + ": " + reply["error"].dump());
      }
      return reply["result"];
    }
  }

  // Evaluates `expression` in the page; returns its value (JSON), or null on an exception.
  json Eval(const std::string& expression) {
    auto r = Call("Runtime.evaluate", {{"expression", expression}, {"returnByValue", true}});
    if (!r.ok() || r->contains("exceptionDetails")) return json();
    return (*r)["result"].value("value", json());
  }

 private:
  DevTools() : ws_(ioc_) {}
  net::io_context ioc_;
  beast::websocket::stream<tcp::socket> ws_;
  int next_id_ = 0;
};

// `status|colour` of an instance's tag, or "" when the row is absent.
std::string TagOf(DevTools& dt, const std::string& id) {
  json v = dt.Eval(
      absl::StrCat("(() => { const t = document.querySelector('tr.instance[data-instance-id=\"", id,
                   "\"] .tag[data-status]'); return t ? t.dataset.status + '|' + "
                   "getComputedStyle(t).backgroundColor : ''; })()"));
  return v.is_string() ? v.get<std::string>() : "";
}

class DashboardTest : public DiscoverydTest {
 protected:
  void TearDown() override {
    if (browser_ != nullptr) (void)browser_->Kill();
  }

  // Starts headless Chromium with a DevTools port and returns a session on its first page.
  std::unique_ptr<DevTools> StartBrowser() {
    auto chromium = ChildProcess::FindExecutable("chromium");
    EXPECT_TRUE(chromium.ok()) << "the dashboard test needs Debian's `chromium` package "
                                  "(scripts/install-deps installs it)";
    if (!chromium.ok()) return nullptr;
    auto dir = MakeTempDir("discoveryd-chromium-");
    EXPECT_TRUE(dir.ok());
    if (!dir.ok()) return nullptr;
    profile_ = *dir;
    auto proc = ChildProcess::Spawn(
        {.argv = {*chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage", "--remote-debugging-port=0",
                  "--remote-debugging-address=127.0.0.1", "--window-size=1400,800",
                  "--user-data-dir=" + profile_, "about:blank"}});
    EXPECT_TRUE(proc.ok()) << proc.status();
    if (!proc.ok()) return nullptr;
    browser_ = *std::move(proc);
    int port = 0;
    bool up = WaitUntil(
        [&] {
          std::ifstream in(profile_ + "/DevToolsActivePort");
          std::string line;
          return std::getline(in, line) && absl::SimpleAtoi(line, &port) && port > 0;
        },
        absl::Seconds(20));
    EXPECT_TRUE(up) << "chromium did not open its DevTools port:\n" << browser_->ReadStderr();
    if (!up) return nullptr;
    std::string ws_path;
    bool listed = WaitUntil(
        [&] {
          auto r = Http(port, "GET", "/json/list", "", {}, absl::Seconds(2));
          if (!r.ok() || r->status != 200) return false;
          json list = json::parse(r->body, nullptr, false);
          if (!list.is_array()) return false;
          for (const json& t : list) {
            if (t.value("type", "") != "page") continue;
            std::string url = t.value("webSocketDebuggerUrl", "");
            size_t p = url.find("/devtools/");
            if (p != std::string::npos) ws_path = url.substr(p);
          }
          return !ws_path.empty();
        },
        absl::Seconds(10));
    EXPECT_TRUE(listed) << "no page target in chromium";
    if (!listed) return nullptr;
    auto dt = DevTools::Connect(port, ws_path);
    EXPECT_TRUE(dt.ok()) << dt.status();
    return dt.ok() ? *std::move(dt) : nullptr;
  }

  std::unique_ptr<ChildProcess> browser_;
  std::string profile_;
};

TEST_F(DashboardTest, LiveTableInHeadlessChromium) {
  // Nothing heartbeats these registrations: their TTL must outlast the test (chromium alone
  // may take 20 s to start under load; with 10 s, dash-ready expired before the page loaded).
  constexpr int kTtl = 120;
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  ASSERT_EQ(
      Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("dash-ready", "ready", kTtl).dump()))
          .status,
      201);
  std::unique_ptr<DevTools> dt = StartBrowser();
  ASSERT_NE(dt, nullptr);
  std::string url = absl::StrCat("http://127.0.0.1:", gw.port, "/");
  ASSERT_TRUE(dt->Call("Page.navigate", {{"url", url}}).ok());

  // The instance registered before the page loaded: a green "ready" tag.
  EXPECT_TRUE(WaitUntil([&] { return TagOf(*dt, "dash-ready") == "ready|rgb(46, 125, 50)"; },
                        absl::Seconds(10)))
      << TagOf(*dt, "dash-ready");
  ASSERT_TRUE(dt->Eval("window.__noReload = 42; document.body.dataset.connected").is_string());
  EXPECT_EQ(dt->Eval("document.body.dataset.connected"), "true");

  // Registered while the page is open: it appears live, coloured by status.
  json lobby = WorldBody("dash-lobby", "initializing", kTtl);
  lobby["type"] = "lobby";
  lobby["group"] = "eu-1";
  lobby["performance"] = {{"players", 42}, {"load", 0.25}};
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances", lobby.dump())).status, 201);
  ASSERT_EQ(
      Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("dash-error", "error", kTtl).dump()))
          .status,
      201);
  ASSERT_EQ(
      Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("dash-drain", "ready", kTtl).dump()))
          .status,
      201);
  ASSERT_EQ(Must(Http(gw.port, "PATCH", "/sd/v1/instances/dash-drain?type=world",
                      R"({"status":"shutting_down","customState":"draining"})"))
                .status,
            200);
  EXPECT_TRUE(
      WaitUntil([&] { return TagOf(*dt, "dash-lobby") == "initializing|rgb(21, 101, 192)"; },
                absl::Seconds(5)))
      << TagOf(*dt, "dash-lobby");
  EXPECT_TRUE(WaitUntil([&] { return TagOf(*dt, "dash-error") == "error|rgb(198, 40, 40)"; },
                        absl::Seconds(5)));
  EXPECT_TRUE(
      WaitUntil([&] { return TagOf(*dt, "dash-drain") == "shutting_down|rgb(239, 108, 0)"; },
                absl::Seconds(5)));
  // Grouped by type: one section per type.
  EXPECT_EQ(dt->Eval("document.querySelectorAll('section.type').length"), 2);
  // Filters: status=error leaves one row; the search box matches the customState.
  EXPECT_EQ(dt->Eval("(() => { const s = document.getElementById('f-status'); s.value = 'error';"
                     " s.dispatchEvent(new Event('change'));"
                     " return document.querySelectorAll('tr.instance').length; })()"),
            1);
  EXPECT_EQ(dt->Eval("(() => { const s = document.getElementById('f-status'); s.value = '';"
                     " s.dispatchEvent(new Event('change'));"
                     " const q = document.getElementById('f-search'); q.value = 'draining';"
                     " q.dispatchEvent(new Event('input'));"
                     " return document.querySelectorAll('tr.instance').length; })()"),
            1);
  dt->Eval(
      "(() => { const q = document.getElementById('f-search'); q.value = '';"
      " q.dispatchEvent(new Event('input')); })()");

  // Screenshot artefact.
  std::filesystem::create_directories(DISCOVERYD_TEST_ARTIFACTS);
  std::string png_path = std::string(DISCOVERYD_TEST_ARTIFACTS) + "/dashboard.png";
  auto shot = dt->Call("Page.captureScreenshot", {{"format", "png"}});
  ASSERT_TRUE(shot.ok()) << shot.status();
  std::string png;
  ASSERT_TRUE(absl::Base64Unescape((*shot)["data"].get<std::string>(), &png));
  std::ofstream(png_path, std::ios::binary) << png;
  std::cout << "dashboard screenshot: " << png_path << std::endl;
  EXPECT_GT(png.size(), 1000u);

  // Deregistered: the row disappears without a reload.
  ASSERT_EQ(Must(Http(gw.port, "DELETE", "/sd/v1/instances/dash-ready?type=world")).status, 200);
  EXPECT_TRUE(WaitUntil([&] { return TagOf(*dt, "dash-ready").empty(); }, absl::Seconds(5)));
  EXPECT_EQ(dt->Eval("window.__noReload"), 42) << "the page reloaded";

  // discoveryd goes away: the banner shows; it comes back on the same port: the page
  // reconnects by itself and shows the current state.
  ASSERT_TRUE(gw.proc->Signal(SIGKILL).ok());
  (void)gw.proc->Wait(absl::Seconds(5));
  EXPECT_TRUE(
      WaitUntil([&] { return dt->Eval("!document.getElementById('banner').hidden") == true; },
                absl::Seconds(10)));
  EXPECT_FALSE(Http(gw.port, "GET", "/healthz", "", {}, absl::Seconds(2)).ok());
  // (the registry changes while the page is disconnected)
  GatewayProc again = StartGateway({}, {}, absl::StrCat("127.0.0.1:", gw.port));
  ASSERT_EQ(again.port, gw.port);
  ASSERT_EQ(Must(Http(again.port, "DELETE", "/sd/v1/instances/dash-error?type=world")).status, 200);
  EXPECT_TRUE(WaitUntil(
      [&] {
        return dt->Eval("document.getElementById('banner').hidden") == true &&
               TagOf(*dt, "dash-error").empty() && !TagOf(*dt, "dash-lobby").empty();
      },
      absl::Seconds(15)));
  EXPECT_EQ(dt->Eval("window.__noReload"), 42);
}

// etcd wiped and restarted: discoveryd sends `reset`, and the page drops every row of the old
// history at once (no ghost), then shows the new state, without a reload.
TEST_F(DashboardTest, ResetAfterEtcdIsWipedLeavesNoGhostRows) {
  GatewayProc gw = StartGateway();
  ASSERT_GT(gw.port, 0);
  ASSERT_EQ(Must(Http(gw.port, "POST", "/sd/v1/instances", WorldBody("ghost", "ready", 60).dump()))
                .status,
            201);
  std::unique_ptr<DevTools> dt = StartBrowser();
  ASSERT_NE(dt, nullptr);
  ASSERT_TRUE(
      dt->Call("Page.navigate", {{"url", absl::StrCat("http://127.0.0.1:", gw.port, "/")}}).ok());
  ASSERT_TRUE(WaitUntil([&] { return !TagOf(*dt, "ghost").empty(); }, absl::Seconds(10)));
  ASSERT_TRUE(dt->Eval("window.__noReload = 7; document.body.dataset.connected").is_string());

  ASSERT_TRUE(cluster_->WipeAndRestartAll().ok());
  ASSERT_TRUE(WaitUntil(
      [&] {
        return Http(gw.port, "POST", "/sd/v1/instances", WorldBody("after", "ready").dump())
                   .value_or(Response{})
                   .status == 201;
      },
      absl::Seconds(10)));
  EXPECT_TRUE(WaitUntil([&] { return TagOf(*dt, "ghost").empty() && !TagOf(*dt, "after").empty(); },
                        absl::Seconds(10)))
      << "ghost: '" << TagOf(*dt, "ghost") << "' after: '" << TagOf(*dt, "after") << "'";
  EXPECT_EQ(dt->Eval("window.__noReload"), 7) << "the page reloaded";
}

}  // namespace
}  // namespace discovery::testing
