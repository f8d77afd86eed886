/*
 * A host built from an install as a user builds one:
 *     cc install_check.c fixture.c $(pkg-config --cflags --libs moerging) -lm
 * It writes three random experts, forwards a few tokens through a uniform router and compares the output with
 * the float64 reference, and checks moe_version() against the version expected. With --no-runtime it also
 * checks that no .NET runtime (libhostfxr, libcoreclr) was loaded into the process: the NativeAOT build needs none.
 *
 * Usage: install_check VERSION [--no-runtime]
 */
#define _GNU_SOURCE
#include "fixture.h"
#include "moerging.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

enum { EXPERTS = 3, D_IN = 16, D_OUT = 8, TOKENS = 4 };

#define REQUIRE(call)                                                                                         \
    do {                                                                                                      \
        moe_status status_ = (call);                                                                          \
        if (status_ != MOE_OK) {                                                                              \
            fprintf(stderr, "%s: %s: %s\n", #call, moe_status_name(status_), moe_last_error());               \
            return 1;                                                                                         \
        }                                                                                                     \
    } while (0)

/* The .NET runtime's own libraries, by file name, in this process's mappings. */
static int runtime_loaded(void)
{
    FILE* maps = fopen("/proc/self/maps", "r");
    if (!maps) {
        perror("/proc/self/maps");
        return 1;
    }
    char line[4096];
    int found = 0;
    while (fgets(line, sizeof line, maps)) {
        if (strstr(line, "libhostfxr.so") || strstr(line, "libcoreclr.so")) {
            fprintf(stderr, "a .NET runtime is loaded: %s", line);
            found = 1;
        }
    }
    fclose(maps);
    return found;
}

int main(int argc, char** argv)
{
    if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "--no-runtime") != 0)) {
        fprintf(stderr, "usage: install_check VERSION [--no-runtime]\n");
        return 2;
    }
    if (strcmp(moe_version(), argv[1]) != 0) {
        fprintf(stderr, "moe_version() is '%s', expected '%s'\n", moe_version(), argv[1]);
        return 1;
    }
    fixture_rng rng = {20240601};
    fixture_library files;
    const fixture_module shape = {"model.layers.0.self_attn.q_proj", D_IN, D_OUT};
    if (fixture_create(&files, EXPERTS, &shape, 1, &rng) != 0) {
        perror("writing the experts");
        return 1;
    }
    moe_engine* engine;
    moe_session* session;
    moe_library* library;
    moe_module* module;
    moe_router* router;
    REQUIRE(moe_engine_create(NULL, &engine));
    REQUIRE(moe_session_create(engine, &session));
    REQUIRE(moe_library_load((const char* const*)files.paths, EXPERTS, &library));
    REQUIRE(moe_library_find_module(library, "q_proj", &module));
    REQUIRE(moe_router_create_uniform(EXPERTS, &router));

    float x[TOKENS * D_IN], base[TOKENS * D_OUT], y[TOKENS * D_OUT], weights[TOKENS * EXPERTS];
    int32_t ids[TOKENS * EXPERTS];
    fixture_fill_normal(&rng, x, TOKENS * D_IN, 1.0);
    fixture_fill_normal(&rng, base, TOKENS * D_OUT, 1.0);
    REQUIRE(moe_forward(session, module, router, x, TOKENS * D_IN, base, y, TOKENS * D_OUT, ids, weights,
                        TOKENS * EXPERTS));

    /* Uniform: every expert at 1/E, in expert order (ties go to the lower id). */
    int32_t expected_ids[TOKENS * EXPERTS];
    double expected_weights[TOKENS * EXPERTS];
    int failures = 0;
    for (int i = 0; i < TOKENS * EXPERTS; i++) {
        expected_ids[i] = i % EXPERTS;
        expected_weights[i] = 1.0 / EXPERTS;
        if (ids[i] != expected_ids[i] || fabs(weights[i] - 1.0 / EXPERTS) > 1e-7) {
            fprintf(stderr, "slot %d: expert %d weight %g, expected expert %d weight 1/%d\n", i, ids[i],
                    (double)weights[i], expected_ids[i], EXPERTS);
            failures++;
        }
    }
    /* Tolerance as in the C API tests: 1e-5 of the largest update, plus y's own float32 rounding. */
    double reference[TOKENS * D_OUT], scale = 0;
    fixture_reference_forward(&files, 0, x, TOKENS, base, expected_ids, expected_weights, EXPERTS, reference);
    for (int i = 0; i < TOKENS * D_OUT; i++) {
        scale = fmax(scale, fabs(reference[i] - base[i]));
    }
    for (int i = 0; i < TOKENS * D_OUT; i++) {
        double bound = 1e-5 * scale + (EXPERTS + 1) * 0x1.0p-24 * fabs(reference[i]);
        if (!(fabs(y[i] - reference[i]) <= bound)) {
            fprintf(stderr, "y[%d] is %.9g, expected %.9g (bound %.3g)\n", i, (double)y[i], reference[i], bound);
            failures++;
        }
    }
    if (!(scale > 0)) {
        fprintf(stderr, "the reference update is zero, so the comparison proves nothing\n");
        failures++;
    }
    if (argc == 3 && runtime_loaded()) {
        failures++;
    }

    REQUIRE(moe_router_free(router));
    REQUIRE(moe_library_free(library));
    REQUIRE(moe_session_free(session));
    REQUIRE(moe_engine_free(engine));
    fixture_destroy(&files);
    printf("moerging %s: forward of %d tokens matches the reference%s: %s\n", moe_version(), TOKENS,
           argc == 3 ? " with no .NET runtime loaded" : "", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
