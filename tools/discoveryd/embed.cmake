# cmake -DINPUT=<file> -DOUTPUT=<header> -DNAME=<identifier> -P embed.cmake
# Writes a header with `inline constexpr std::string_view NAME` holding the file's bytes as
# a raw string literal (the file must not contain the delimiter `)EMBED"`).
file(READ "${INPUT}" content)
string(FIND "${content}" ")EMBED\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw-string delimiter )EMBED\"")
endif()
file(WRITE "${OUTPUT}.tmp"
  "// Generated from ${INPUT} by embed.cmake. Do not edit.\n#pragma once\n#include <string_view>\n"
  "namespace discoveryd {\ninline constexpr std::string_view ${NAME} = R\"EMBED(${content})EMBED\";\n}\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
