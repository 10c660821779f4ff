# Runs one libFuzzer target on a scratch copy of its committed seeds (cmake -P; see CMakeLists.txt):
#   cmake -D FUZZER=<binary> -D SEEDS=<seed dir> -D SCRATCH=<scratch corpus dir> -D ARTIFACTS=<artifact dir>
#         -D OPTIONS=<libFuzzer options separated by '|'> -P run_fuzzer.cmake
# The scratch corpus starts afresh from the seeds on every run: the fuzzer adds what it finds there, never to SEEDS.

foreach(variable FUZZER SEEDS SCRATCH ARTIFACTS OPTIONS)
    if(NOT DEFINED ${variable})
        message(FATAL_ERROR "run_fuzzer.cmake: -D ${variable}=… is required")
    endif()
endforeach()

file(REMOVE_RECURSE ${SCRATCH})
file(MAKE_DIRECTORY ${SCRATCH} ${ARTIFACTS})
file(GLOB seeds LIST_DIRECTORIES false ${SEEDS}/*)
if(NOT seeds)
    message(FATAL_ERROR "run_fuzzer.cmake: no seeds in ${SEEDS}")
endif()
file(COPY ${seeds} DESTINATION ${SCRATCH})

string(REPLACE "|" ";" options "${OPTIONS}")
execute_process(COMMAND ${FUZZER} ${options} -artifact_prefix=${ARTIFACTS}/ ${SCRATCH} RESULT_VARIABLE result)
if(NOT result EQUAL 0)
    message(FATAL_ERROR "${FUZZER} failed (${result}); the input that broke it is in ${ARTIFACTS}/")
endif()
