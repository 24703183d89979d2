# fuzz_book: libFuzzer target for the address book's text format (fuzz/fuzz_book.c). clang
# only; a configure of its own: cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DPP_FUZZ=ON
if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "PP_FUZZ needs clang (-DCMAKE_C_COMPILER=clang): libFuzzer is clang's")
endif()
pkg_check_modules(PP_FUZZ_LUA REQUIRED IMPORTED_TARGET lua5.4)
add_executable(fuzz_book ${CMAKE_CURRENT_LIST_DIR}/fuzz_book.c)
target_include_directories(fuzz_book PRIVATE ${CMAKE_SOURCE_DIR}/bindings)
target_link_libraries(fuzz_book PRIVATE peerpool_engine PkgConfig::PP_FUZZ_LUA)
target_compile_options(fuzz_book PRIVATE -fsanitize=fuzzer,address,undefined
                       -fno-sanitize-recover=undefined)
target_link_options(fuzz_book PRIVATE -fsanitize=fuzzer,address,undefined)
# ctest case fuzz.book: a short deterministic run from the committed seed corpus (what it finds
# goes to the build dir), as spec/fuzz's targets do, so that `ctest -R '^fuzz\.'` runs it too.
file(MAKE_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz-found-book)
add_test(NAME fuzz.book
  COMMAND fuzz_book -runs=50000 -seed=1 -max_len=4096 -max_total_time=60
          -dict=${CMAKE_CURRENT_LIST_DIR}/book.dict -artifact_prefix=${CMAKE_BINARY_DIR}/
          ${CMAKE_BINARY_DIR}/fuzz-found-book ${CMAKE_CURRENT_LIST_DIR}/corpus/book)
set_tests_properties(fuzz.book PROPERTIES TIMEOUT 120)
