# Writes a header holding a text file as a std::string_view, so that a page ships inside the
# executable: cmake -DINPUT=file -DOUTPUT=header -DNAME=kName -P embed_text.cmake
file(READ "${INPUT}" content)
string(FIND "${content}" ")shmsched_embed\"" clash)
if(NOT clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} contains the raw string delimiter )shmsched_embed\"")
endif()
file(WRITE "${OUTPUT}.tmp"
  "// Generated from ${INPUT} by cmake/embed_text.cmake: edit that file, not this one.\n"
  "#pragma once\n#include <string_view>\n"
  "inline constexpr std::string_view ${NAME} = R\"shmsched_embed(${content})shmsched_embed\";\n")
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
