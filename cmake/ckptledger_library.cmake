# ckptledger_library(NAME SOURCES ... [PUBLIC ...] [PRIVATE ...]): one static library of the project.
# Every library sees the public headers (include/) and, inside the build only, the internal headers
# by their folder (#include "storage/durable_file.h"); an installed consumer sees include/ only.
function(ckptledger_library name)
  cmake_parse_arguments(L "" "" "SOURCES;PUBLIC;PRIVATE" ${ARGN})
  add_library(${name} STATIC ${L_SOURCES})
  target_include_directories(${name} PUBLIC
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include> $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}>
    $<INSTALL_INTERFACE:include>)
  target_compile_options(${name} PRIVATE ${CKPTLEDGER_WARNINGS})
  target_link_libraries(${name} PUBLIC ${L_PUBLIC} PRIVATE ${L_PRIVATE})
endfunction()
