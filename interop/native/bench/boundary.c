/*
 * The cost of the C boundary: the first call (which loads the managed side: starts the .NET runtime in the
 * hosted build, maps MoErging.Interop.so in the NativeAOT one), then warm per-call times of tiny forwards
 * through the C API. The managed peer is 'dotnet run -c Release --project bench/MoErging.Bench
 * -- boundary DIR...' on the same adapter directories; the difference is what the boundary adds.
 *
 * Usage: moerging_bench DIR   (writes the tiny library into a new directory under DIR and keeps it there)
 */
#define _GNU_SOURCE
#include "fixture.h"
#include "moerging.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { EXPERTS = 4, DIM = 16, CALLS = 2000, BATCHES = 501 };

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int compare(const void* a, const void* b)
{
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

#define REQUIRE(call)                                                                                         \
    do {                                                                                                      \
        moe_status status_ = (call);                                                                          \
        if (status_ != MOE_OK) {                                                                              \
            fprintf(stderr, "%s: %s: %s\n", #call, moe_status_name(status_), moe_last_error());               \
            exit(1);                                                                                          \
        }                                                                                                     \
    } while (0)

/* Minimum and median over BATCHES batches of CALLS calls, in ns per call: short batches, so that on a shared
 * machine some run undisturbed, and the minimum is theirs. */
#define TIME_CALLS(result, call)                                                                              \
    do {                                                                                                      \
        double batches_[BATCHES];                                                                             \
        for (int b_ = 0; b_ < BATCHES; b_++) {                                                                \
            double start_ = now();                                                                            \
            for (int i_ = 0; i_ < CALLS; i_++) {                                                              \
                REQUIRE(call);                                                                                \
            }                                                                                                 \
            batches_[b_] = (now() - start_) * 1e9 / CALLS;                                                    \
        }                                                                                                     \
        qsort(batches_, BATCHES, sizeof(double), compare);                                                    \
        (result)[0] = batches_[0];                                                                            \
        (result)[1] = batches_[BATCHES / 2];                                                                  \
    } while (0)

int main(int argc, char** argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: moerging_bench DIR\n");
        return 2;
    }
    double process_start = now(); /* main(): the C start-up before it is well under a millisecond */
    fixture_rng rng = {1};
    fixture_library library_files;
    const fixture_module module_shape = {"model.layers.0.self_attn.q_proj", DIM, DIM};
    if (setenv("TMPDIR", argv[1], 1) != 0 || fixture_create(&library_files, EXPERTS, &module_shape, 1, &rng) != 0) {
        fprintf(stderr, "could not write the adapters under %s\n", argv[1]);
        return 1;
    }

    /* One CPU thread: the worker pool's wake-up costs the same on both sides and would drown the boundary. */
    moe_engine_options options;
    REQUIRE(moe_engine_default_options(&options, sizeof options));
    options.cpu_threads = 1;
    double t0 = now();
    moe_engine* engine;
    REQUIRE(moe_engine_create(&options, &engine));
    double first_call = now() - t0;
    t0 = now();
    moe_library* library;
    REQUIRE(moe_library_load((const char* const*)library_files.paths, EXPERTS, &library));
    double load = now() - t0;
    moe_session* session;
    moe_module* module;
    moe_router* router;
    REQUIRE(moe_session_create(engine, &session));
    REQUIRE(moe_library_find_module(library, "q_proj", &module));
    REQUIRE(moe_router_create_uniform(EXPERTS, &router));

    float x[DIM], y[DIM], weights[EXPERTS], assigned_weight = 1.0f;
    int32_t ids[EXPERTS], assigned_id = 2;
    fixture_fill_normal(&rng, x, DIM, 1.0);
    memset(y, 0, sizeof y);
    t0 = now();
    REQUIRE(moe_forward(session, module, router, x, DIM, NULL, y, DIM, ids, weights, EXPERTS));
    double first_forward = now() - t0;
    double to_first_forward = now() - process_start;

    double info[2], forward[2], assigned[2];
    TIME_CALLS(info, moe_router_info(router, NULL, NULL));
    TIME_CALLS(forward, moe_forward(session, module, router, x, DIM, NULL, y, DIM, ids, weights, EXPERTS));
    TIME_CALLS(assigned, moe_forward_assigned(session, module, &assigned_id, &assigned_weight, 1, 1, x, DIM, NULL, y,
                                              DIM));

    printf("adapters: %s (E = %d, d_in = d_out = %d, ranks", library_files.root, EXPERTS, DIM);
    for (int e = 0; e < EXPERTS; e++) {
        printf(" %d", library_files.experts[e].rank);
    }
    printf(")\n");
    printf("first call (moe_engine_create: loads managed side): %.1f ms\n", first_call * 1e3);
    printf("moe_library_load of %d adapters:                   %.1f ms\n", EXPERTS, load * 1e3);
    printf("first moe_forward (JIT, in the hosted build):       %.1f ms\n", first_forward * 1e3);
    printf("start to first forward (adapters written, engine,\n"
           "  library, session, router, forward):               %.1f ms\n", to_first_forward * 1e3);
    printf("warm, one CPU thread, %d batches of %d calls, ns per call (min / median):\n", BATCHES, CALLS);
    printf("  moe_router_info (boundary and one handle lookup): %.1f / %.1f\n", info[0], info[1]);
    printf("  moe_forward, uniform router, T = 1:               %.1f / %.1f\n", forward[0], forward[1]);
    printf("  moe_forward_assigned, k = 1, T = 1:               %.1f / %.1f\n", assigned[0], assigned[1]);

    REQUIRE(moe_router_free(router));
    REQUIRE(moe_session_free(session));
    REQUIRE(moe_library_free(library));
    REQUIRE(moe_engine_free(engine));
    return 0;
}
