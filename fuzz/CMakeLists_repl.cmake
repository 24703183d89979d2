# The libFuzzer target of the REPL socket's line protocol (bindings/host/repl_frames.lua),
# included by bindings/host/CMakeLists.txt when PP_FUZZ is on. clang only:
#   CC=clang cmake -S . -B build-fuzz -DPP_FUZZ=ON
#   cmake --build build-fuzz --target fuzz_repl_frames
#   build-fuzz/fuzz/fuzz_repl_frames -max_total_time=60 fuzz/corpus/repl_frames
# ctest (in that build) replays the seed corpus and runs 20000 fresh inputs.
if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(WARNING "PP_FUZZ: fuzz_repl_frames needs clang (-fsanitize=fuzzer); configure with "
                  "CC=clang. Not built.")
  return()
endif()

add_executable(fuzz_repl_frames ${CMAKE_SOURCE_DIR}/fuzz/fuzz_repl_frames.c
               ${PP_REPL_FRAMES_EMBED})
target_include_directories(fuzz_repl_frames PRIVATE ${LUA_INCLUDE_DIRS}
                           ${CMAKE_BINARY_DIR}/generated)
target_compile_options(fuzz_repl_frames PRIVATE -fsanitize=fuzzer,address,undefined)
target_link_options(fuzz_repl_frames PRIVATE -fsanitize=fuzzer,address,undefined)
target_link_directories(fuzz_repl_frames PRIVATE ${LUA_LIBRARY_DIRS})
target_link_libraries(fuzz_repl_frames PRIVATE ${LUA_LIBRARIES})
set_target_properties(fuzz_repl_frames PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)

enable_testing() # this directory is configured before the top level enables tests
file(GLOB PP_REPL_FRAMES_SEEDS ${CMAKE_SOURCE_DIR}/fuzz/corpus/repl_frames/*)
add_test(NAME fuzz.repl_frames.seeds COMMAND fuzz_repl_frames ${PP_REPL_FRAMES_SEEDS})
add_test(NAME fuzz.repl_frames.runs COMMAND fuzz_repl_frames -runs=20000 -seed=1)
