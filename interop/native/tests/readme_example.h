/*
 * The README's C example (README.md, "The C ABI and the Python package") as a function, so that the tests build
 * and run the text users read. CMakeLists.txt writes it into the build directory from tests/readme_example.c.in
 * and the README's ```c block (its leading #include lines at file scope, the rest as this function's body),
 * reading the README again whenever it changes.
 */
#ifndef MOERGING_README_EXAMPLE_H
#define MOERGING_README_EXAMPLE_H

#include <stddef.h>
#include <stdint.h>

/* The names the example uses without declaring them. Returns 1 when its setup failed, else 0; either way the
 * example prints what went wrong to stderr. */
int readme_example(const float* x, size_t T, size_t d_in, const float* base, float* y, size_t d_out, int32_t* ids,
                   float* weights);

#endif
