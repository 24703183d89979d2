# Writes peerpool.pc at install time (the top-level CMakeLists.txt includes this from
# install(CODE) with PP_PC_IN, PP_PC_WORK_DIR, PP_PC_VERSION, PP_PC_LIBDIR and PP_PC_INCLUDEDIR
# set). At that point CMAKE_INSTALL_PREFIX is the prefix actually installed into, so
# `cmake --install build --prefix DIR` gets a peerpool.pc whose paths name DIR, not the prefix
# the build was configured with.
#
# libuv is in Requires, not Requires.private: peerpool.h includes uv.h and every program that
# uses the library calls libuv itself (uv_default_loop, uv_run), so it needs libuv's flags and
# library whether it links libpeerpool shared or static.
# OpenSSL (libssl, libcrypto) and c-ares (libcares) are in Requires.private: only the engine
# calls them, so only a static link (`pkg-config --static`) needs them.
set(PP_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
foreach(dir LIBDIR INCLUDEDIR)
  if(NOT IS_ABSOLUTE "${PP_PC_${dir}}")
    set(PP_PC_${dir} "\${prefix}/${PP_PC_${dir}}")
  endif()
endforeach()
# The configured file goes through a work dir of its own per prefix, then file(INSTALL) puts
# it in place: that prints "-- Installing:", honours DESTDIR and lists it in the manifest.
string(MD5 pp_pc_key "${CMAKE_INSTALL_PREFIX}")
set(pp_pc_work "${PP_PC_WORK_DIR}/${pp_pc_key}")
configure_file("${PP_PC_IN}" "${pp_pc_work}/peerpool.pc" @ONLY)
string(REPLACE "\${prefix}" "${CMAKE_INSTALL_PREFIX}" pp_pc_dest "${PP_PC_LIBDIR}/pkgconfig")
file(INSTALL DESTINATION "${pp_pc_dest}" TYPE FILE FILES "${pp_pc_work}/peerpool.pc")
