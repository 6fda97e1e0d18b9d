# Build time: the suite (scripts/test.sh) builds the project three times on two cores, and most of
# a file's compile time here is generating code, not parsing headers. The libraries' and
# shmschedd's files instantiate and emit the same inline functions and templates (std, msgpack,
# spdlog, the scheduler's containers) once per file; compiled in batches (unity builds), once per
# batch: shmschedd's files took 130 s of CPU in the ASan build instead of 215.
# Off in the fuzz build (clang), and with -DSHMSCHED_UNITY_BUILD=OFF (one object per file again:
# an edit then rebuilds only its file, not its batch).
option(SHMSCHED_UNITY_BUILD "Compile the libraries and shmschedd in batches of files (faster)" ON)

# shmsched_unity_build(TARGET [BATCH_SIZE]): TARGET's files are compiled as one translation unit,
# or as several of at most BATCH_SIZE files (in the order of the target's sources). The files of a
# batch share their anonymous namespaces, static functions and using-declarations: two files that
# define the same name there cannot be in one batch. Give one of them
#   set_source_files_properties(FILE PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
# (a file with its own COMPILE_OPTIONS or COMPILE_DEFINITIONS should get it too).
function(shmsched_unity_build target)
  set(batch_size 0)
  if(ARGC GREATER 1)
    set(batch_size ${ARGV1})
  endif()
  if(SHMSCHED_UNITY_BUILD AND NOT SHMSCHED_FUZZ)
    set_target_properties(${target} PROPERTIES UNITY_BUILD ON UNITY_BUILD_BATCH_SIZE ${batch_size})
  endif()
endfunction()
