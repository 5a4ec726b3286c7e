# bpf_object(NAME SRC [HEADERS h...])
#
# Compiles the kernel program SRC (bpf/NAME.bpf.c) with clang for the BPF target against a
# vmlinux.h made at build time from the running kernel's BTF, turns the object into a libbpf
# skeleton header NAME.skel.h, and exposes the INTERFACE target NAME_skel: link it and
# `#include "NAME.skel.h"`. HEADERS are the headers shared with user space; a change to one
# rebuilds the object. BPF_OBJECT_${NAME} (parent scope) holds the object's path.
#
# vmlinux.h comes from `bpftool btf dump file /sys/kernel/btf/vmlinux format c`. A machine
# without kernel BTF uses bpf/vmlinux_fallback.h, a small hand-written header with only the
# UAPI types our programs use. -DOFFLOAD_BPF_VMLINUX=fallback forces it (to test that path).

set(OFFLOAD_BPF_VMLINUX "auto" CACHE STRING "vmlinux.h source: auto (kernel BTF, else fallback) or fallback")
set(OFFLOAD_BPF_BTF "/sys/kernel/btf/vmlinux" CACHE FILEPATH "kernel BTF used to generate vmlinux.h")

find_program(BPF_CLANG NAMES clang clang-16 clang-15 clang-14 REQUIRED)
find_program(BPFTOOL NAMES bpftool HINTS /usr/sbin /sbin /usr/local/sbin REQUIRED)

# One vmlinux.h per build tree, made by the target bpf_vmlinux.
function(_bpf_vmlinux_header out_var)
  set(dir ${CMAKE_BINARY_DIR}/bpf/include)
  set(header ${dir}/vmlinux.h)
  if(NOT TARGET bpf_vmlinux)
    file(MAKE_DIRECTORY ${dir})
    set(fallback ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/../bpf/vmlinux_fallback.h)
    if(OFFLOAD_BPF_VMLINUX STREQUAL "auto" AND EXISTS ${OFFLOAD_BPF_BTF})
      message(STATUS "BPF: vmlinux.h from ${OFFLOAD_BPF_BTF}")
      add_custom_command(OUTPUT ${header}
        COMMAND sh -c "\"${BPFTOOL}\" btf dump file \"${OFFLOAD_BPF_BTF}\" format c > \"${header}.tmp\""
        COMMAND ${CMAKE_COMMAND} -E rename ${header}.tmp ${header}
        COMMENT "Generating vmlinux.h from ${OFFLOAD_BPF_BTF}"
        VERBATIM)
    elseif(EXISTS ${fallback})
      message(STATUS "BPF: no kernel BTF (or fallback forced): using ${fallback}")
      add_custom_command(OUTPUT ${header}
        COMMAND ${CMAKE_COMMAND} -E copy ${fallback} ${header}
        DEPENDS ${fallback}
        COMMENT "Using the checked-in vmlinux_fallback.h"
        VERBATIM)
    else()
      message(FATAL_ERROR "BPF: no kernel BTF at ${OFFLOAD_BPF_BTF} and no ${fallback}; "
        "build on a kernel with CONFIG_DEBUG_INFO_BTF=y or set OFFLOAD_BPF_BTF")
    endif()
    add_custom_target(bpf_vmlinux DEPENDS ${header})
  endif()
  set(${out_var} ${header} PARENT_SCOPE)
endfunction()

function(bpf_object NAME SRC)
  set(BPF_HEADERS "")
  cmake_parse_arguments(PARSE_ARGV 2 BPF "" "" "HEADERS")
  _bpf_vmlinux_header(vmlinux)
  get_filename_component(src ${SRC} ABSOLUTE)
  set(out ${CMAKE_CURRENT_BINARY_DIR})
  set(obj ${out}/${NAME}.bpf.o)
  set(skel ${out}/${NAME}.skel.h)
  set(includes -I${CMAKE_BINARY_DIR}/bpf/include -I${CMAKE_CURRENT_SOURCE_DIR})
  foreach(dir ${LIBBPF_INCLUDE_DIRS})
    list(APPEND includes -I${dir})
  endforeach()

  add_custom_command(OUTPUT ${obj}
    COMMAND ${BPF_CLANG} -g -O2 -target bpf -D__TARGET_ARCH_x86 -Wall -Werror
            ${includes} -c ${src} -o ${obj}
    DEPENDS ${src} ${vmlinux} ${BPF_HEADERS} bpf_vmlinux
    COMMENT "BPF object ${NAME}.bpf.o"
    VERBATIM)
  add_custom_command(OUTPUT ${skel}
    COMMAND sh -c "\"${BPFTOOL}\" gen skeleton \"${obj}\" name ${NAME} > \"${skel}.tmp\""
    COMMAND ${CMAKE_COMMAND} -E rename ${skel}.tmp ${skel}
    DEPENDS ${obj}
    COMMENT "BPF skeleton ${NAME}.skel.h"
    VERBATIM)
  add_custom_target(${NAME}_skel_gen DEPENDS ${skel})

  # User space includes "NAME.skel.h" and the shared types as "bpf/NAME.h".
  get_filename_component(root ${CMAKE_CURRENT_SOURCE_DIR} DIRECTORY)
  add_library(${NAME}_skel INTERFACE)
  target_include_directories(${NAME}_skel INTERFACE ${out} ${root})
  target_link_libraries(${NAME}_skel INTERFACE PkgConfig::LIBBPF)
  add_dependencies(${NAME}_skel ${NAME}_skel_gen)
  set(BPF_OBJECT_${NAME} ${obj} PARENT_SCOPE)
endfunction()
