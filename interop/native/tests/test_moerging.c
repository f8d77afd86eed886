/*
 * Tests of the C API through libmoerging.so: every router's forward against a float64 reference computed
 * from the raw factors (fresh random experts and inputs each run; the seed is printed and
 * MOERGING_TEST_SEED repeats a run), the README's C example (readme_example.h), many threads against one, and
 * misuse, which must give a status and a message naming the problem, never a crash.
 *
 * Usage: moerging_test [--junit FILE]
 */
#define _GNU_SOURCE
#include "fixture.h"
#include "moerging.h"
#include "readme_example.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char** environ;

/* ---- A small harness: named cases, checks that record the first failures, a JUnit report ---- */

#define FAILURE_CAPACITY 8192

static pthread_mutex_t failure_lock = PTHREAD_MUTEX_INITIALIZER;
static char failure_text[FAILURE_CAPACITY];
static int failure_count;

__attribute__((format(printf, 3, 4))) static void fail(const char* file, int line, const char* format, ...)
{
    char message[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    pthread_mutex_lock(&failure_lock);
    fprintf(stderr, "  FAIL %s:%d: %s\n", file, line, message);
    size_t used = strlen(failure_text);
    snprintf(failure_text + used, sizeof failure_text - used, "%s:%d: %s\n", file, line, message);
    failure_count++;
    pthread_mutex_unlock(&failure_lock);
}

#define CHECK(condition, ...)                                                                                 \
    do {                                                                                                      \
        if (!(condition)) {                                                                                   \
            fail(__FILE__, __LINE__, __VA_ARGS__);                                                            \
        }                                                                                                     \
    } while (0)

#define CHECK_OK(call)                                                                                        \
    do {                                                                                                      \
        moe_status status_ = (call);                                                                          \
        CHECK(status_ == MOE_OK, "%s returned %s: %s", #call, moe_status_name(status_), moe_last_error());    \
    } while (0)

/* The call must fail with `expected`, and its message must contain `fragment` (what was wrong). */
#define CHECK_FAILS(call, expected, fragment) expect_failure((call), (expected), (fragment), #call, __FILE__, __LINE__)

static void expect_failure(moe_status got, moe_status expected, const char* fragment, const char* call,
                           const char* file, int line)
{
    const char* message = moe_last_error();
    if (got != expected) {
        fail(file, line, "%s returned %s, expected %s (message: %s)", call, moe_status_name(got),
             moe_status_name(expected), message);
    } else if (!strstr(message, fragment)) {
        fail(file, line, "%s: the message \"%s\" does not mention \"%s\"", call, message, fragment);
    }
}

/* ---- The build under test ---- */

#ifdef MOE_TEST_CPU_ONLY
/* The NativeAOT build: its managed side is one library, and every GPU backend is refused as CPU-only. */
#define MANAGED_FILE "MoErging.Interop.so"
#define CPU_ONLY_MESSAGE "CPU-only"
#else
#define MANAGED_FILE "MoErging.Interop.dll"
#endif

/* ---- Shared state: one engine, one library, one session for the main thread ---- */

enum { EXPERTS = 5, D_IN = 16, D_OUT = 12, D_OUT_V = 8 };

static const fixture_module MODULES[] = {
    {"model.layers.0.self_attn.q_proj", D_IN, D_OUT},
    {"model.layers.0.self_attn.v_proj", D_IN, D_OUT_V},
    {"model.layers.1.self_attn.q_proj", D_IN, D_OUT},
};
enum { Q0 = 0, V0 = 1 };

static const char* program; /* argv[0], to start the child of runtime_missing */
static fixture_rng rng;
static fixture_library fixture;
static moe_engine* engine;
static moe_library* library;
static moe_session* session;
static moe_module* q0;
static moe_module* v0;

static float* random_floats(size_t count, double scale)
{
    float* values = malloc(count * sizeof(float));
    fixture_fill_normal(&rng, values, count, scale);
    return values;
}

/* float32 outputs against the float64 reference, element by element:
 * |y - y_ref| <= 1e-5 * max|y_ref - base| + (slots + 1) * 2^-24 * |y_ref|
 * (the update's size sets the tolerance, so a wrong update cannot hide behind the base; the second term is
 * y's own float32 rounding after each of at most `slots` contributions). */
static void check_close(const float* y, const double* reference, const float* base, size_t count, int slots,
                        const char* what)
{
    double scale = 0;
    for (size_t i = 0; i < count; i++) {
        scale = fmax(scale, fabs(reference[i] - (base ? base[i] : 0.0)));
    }
    CHECK(scale > 0, "%s: the reference update is zero, so the check would prove nothing", what);
    for (size_t i = 0; i < count; i++) {
        double bound = 1e-5 * scale + (slots + 1) * 0x1.0p-24 * fabs(reference[i]);
        double error = fabs((double)y[i] - reference[i]);
        if (!(error <= bound)) {
            fail(__FILE__, __LINE__, "%s: output %zu is %.9g, expected %.9g (error %.3g > bound %.3g)", what, i,
                 (double)y[i], reference[i], error, bound);
            return;
        }
    }
}

/* The engine's choice for one token among `experts` (at most EXPERTS) must be a valid top-k of the float64
 * scores (descending; nothing dropped scores above a kept one), up to a slack for near ties; its weights must be
 * the softmax of the kept scores within 1e-5. The reference weights go to `weights_out`. */
static void check_routing(const double* scores, int experts, const int32_t* ids, const float* weights, int k,
                          double* weights_out, const char* what)
{
    double top = 0;
    for (int e = 0; e < experts; e++) {
        top = fmax(top, fabs(scores[e]));
    }
    double slack = 1e-4 * (1 + top), lowest = INFINITY, max_kept = -INFINITY;
    int kept[EXPERTS] = {0};
    for (int s = 0; s < k; s++) {
        if (ids[s] < 0 || ids[s] >= experts || kept[ids[s]]) {
            fail(__FILE__, __LINE__, "%s: slot %d holds expert %d (out of range or repeated)", what, s, ids[s]);
            return;
        }
        kept[ids[s]] = 1;
        CHECK(s == 0 || scores[ids[s]] <= scores[ids[s - 1]] + slack, "%s: slot %d (expert %d) outranks slot %d",
              what, s, ids[s], s - 1);
        lowest = fmin(lowest, scores[ids[s]]);
        max_kept = fmax(max_kept, scores[ids[s]]);
    }
    for (int e = 0; e < experts; e++) {
        CHECK(kept[e] || scores[e] <= lowest + slack, "%s: dropped expert %d scores %.9g, above kept %.9g", what, e,
              scores[e], lowest);
    }
    double sum = 0;
    for (int s = 0; s < k; s++) {
        weights_out[s] = exp(scores[ids[s]] - max_kept);
        sum += weights_out[s];
    }
    for (int s = 0; s < k; s++) {
        weights_out[s] /= sum;
        CHECK(fabs(weights[s] - weights_out[s]) <= 1e-5, "%s: slot %d weight %.9g, expected %.9g", what, s,
              (double)weights[s], weights_out[s]);
    }
}

/* The unit top right singular vector of dW = B A (d_out x d_in): the top eigenvector of G = dW^T dW,
 * by repeated squaring of G (so even a small eigenvalue gap converges), then checked by its residual. */
static int top_right_singular_vector(const fixture_expert* expert, int module, int d_in, int d_out, double* v)
{
    double* dw = calloc((size_t)d_out * d_in, sizeof(double));
    double* g = calloc((size_t)d_in * d_in, sizeof(double));
    double* h = calloc((size_t)d_in * d_in, sizeof(double));
    for (int o = 0; o < d_out; o++) {
        for (int i = 0; i < d_in; i++) {
            for (int r = 0; r < expert->rank; r++) {
                dw[o * d_in + i] += (double)expert->b[module][o * expert->rank + r] * expert->a[module][r * d_in + i];
            }
        }
    }
    for (int i = 0; i < d_in; i++) {
        for (int j = 0; j < d_in; j++) {
            for (int o = 0; o < d_out; o++) {
                g[i * d_in + j] += dw[o * d_in + i] * dw[o * d_in + j];
            }
        }
    }
    memcpy(h, g, sizeof(double) * (size_t)d_in * d_in);
    for (int round = 0; round < 64; round++) {
        double* square = calloc((size_t)d_in * d_in, sizeof(double));
        double norm = 0;
        for (int i = 0; i < d_in; i++) {
            for (int j = 0; j < d_in; j++) {
                for (int l = 0; l < d_in; l++) {
                    square[i * d_in + j] += h[i * d_in + l] * h[l * d_in + j];
                }
                norm = fmax(norm, fabs(square[i * d_in + j]));
            }
        }
        for (int i = 0; i < d_in * d_in; i++) {
            h[i] = square[i] / norm;
        }
        free(square);
    }
    /* h is now v v^T up to scale: its largest column is v. */
    int best = 0;
    double best_norm = 0;
    for (int j = 0; j < d_in; j++) {
        double n = 0;
        for (int i = 0; i < d_in; i++) {
            n += h[i * d_in + j] * h[i * d_in + j];
        }
        if (n > best_norm) {
            best_norm = n;
            best = j;
        }
    }
    for (int i = 0; i < d_in; i++) {
        v[i] = h[i * d_in + best] / sqrt(best_norm);
    }
    double lambda = 0, residual = 0;
    for (int i = 0; i < d_in; i++) {
        for (int j = 0; j < d_in; j++) {
            lambda += v[i] * g[i * d_in + j] * v[j];
        }
    }
    for (int i = 0; i < d_in; i++) {
        double gv = 0;
        for (int j = 0; j < d_in; j++) {
            gv += g[i * d_in + j] * v[j];
        }
        residual = fmax(residual, fabs(gv - lambda * v[i]));
    }
    free(dw);
    free(g);
    free(h);
    return residual <= 1e-9 * lambda;
}

/* ---- Cases ---- */

static void test_abi_and_errors(void)
{
    CHECK(moe_abi_version() == MOE_ABI_VERSION, "moe_abi_version() is %u, the header says %d", moe_abi_version(),
          MOE_ABI_VERSION);
    CHECK(strcmp(moe_status_name(MOE_ERROR_FORMAT), "MOE_ERROR_FORMAT") == 0, "status name");
    CHECK(strcmp(moe_status_name((moe_status)99), "MOE_STATUS_UNKNOWN") == 0, "unknown status name");
    CHECK(moe_last_error() != NULL, "moe_last_error() is NULL");
    CHECK(moe_version() != NULL && strcmp(moe_version(), MOE_TEST_VERSION) == 0,
          "moe_version() is \"%s\", Directory.Build.props says \"%s\"", moe_version() ? moe_version() : "(null)",
          MOE_TEST_VERSION);
}

/* A child process whose managed side is missing: every call reports it, nothing aborts. */
static int expect_runtime_missing(void)
{
    moe_engine* e = (moe_engine*)&e;
    CHECK_OK(moe_engine_free(NULL)); /* answered without the runtime */
    CHECK(strcmp(moe_last_error(), "") == 0, "a fresh thread's message is \"%s\", not empty", moe_last_error());
    CHECK_FAILS(moe_engine_create(NULL, &e), MOE_ERROR_BACKEND_UNAVAILABLE, MANAGED_FILE);
    CHECK(e == NULL, "the out-parameter was not cleared");
    const char* path = "/nonexistent";
    moe_library* l = NULL;
    CHECK_FAILS(moe_library_load(&path, 1, &l), MOE_ERROR_BACKEND_UNAVAILABLE, "MOERGING_MANAGED_DIR");
    return failure_count == 0 ? 0 : 1;
}

static void test_runtime_missing(void)
{
    char variable[PATH_MAX + 32];
    snprintf(variable, sizeof variable, "MOERGING_MANAGED_DIR=%s", fixture.root); /* exists, holds no assembly */
    size_t count = 0;
    while (environ[count]) {
        count++;
    }
    char** environment = calloc(count + 2, sizeof(char*));
    size_t used = 0;
    for (size_t i = 0; i < count; i++) {
        if (strncmp(environ[i], "MOERGING_MANAGED_DIR=", 21) != 0) {
            environment[used++] = environ[i];
        }
    }
    environment[used] = variable;
    char* arguments[] = {(char*)program, "--expect-runtime-missing", NULL};
    pid_t child;
    int rc = posix_spawnp(&child, program, NULL, NULL, arguments, environment);
    free(environment);
    CHECK(rc == 0, "posix_spawn failed: %s", strerror(rc));
    int status = 0;
    if (rc == 0) {
        waitpid(child, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the child without a managed side failed (see its output above; wait status %d)", status);
    }
}

static void test_options(void)
{
    moe_engine_options options;
    CHECK_OK(moe_engine_default_options(&options, sizeof options));
    CHECK(options.struct_size == sizeof options && options.backend == MOE_BACKEND_AUTO && options.cpu_threads == 0,
          "engine defaults");
    moe_arrow_options arrow;
    CHECK_OK(moe_arrow_default_options(&arrow, sizeof arrow));
    CHECK(arrow.top_k == 0 && arrow.temperature == 0.0f, "Arrow defaults are 0: the library's own");
    moe_library_options library_options;
    CHECK_OK(moe_library_default_options(&library_options, sizeof library_options));
    CHECK(library_options.struct_size == sizeof library_options && library_options.names == NULL &&
              library_options.strict == 0 && library_options.lazy == 0 && library_options.quiet == 0,
          "library defaults");
    moe_linear_router_options linear;
    CHECK_OK(moe_linear_router_default_options(&linear, sizeof linear));
    CHECK(linear.top_k == 1 && linear.temperature == 1.0f && linear.bias == NULL && linear.bias_count == 0,
          "linear defaults");
    CHECK_FAILS(moe_engine_default_options(NULL, sizeof options), MOE_ERROR_INVALID_ARGUMENT, "options is NULL");
    CHECK_FAILS(moe_engine_default_options(&options, 4), MOE_ERROR_INVALID_ARGUMENT, "size is 4");

    moe_engine* e = NULL;
    options.struct_size = 4;
    CHECK_FAILS(moe_engine_create(&options, &e), MOE_ERROR_INVALID_ARGUMENT, "struct_size is 4");

    /* A struct from a newer header: unknown fields are fine while zero, refused once set. */
    struct {
        moe_engine_options known;
        uint64_t newer[3];
    } bigger;
    CHECK_OK(moe_engine_default_options(&bigger.known, sizeof bigger));
    CHECK(bigger.known.struct_size == sizeof bigger && bigger.newer[0] == 0 && bigger.newer[2] == 0,
          "defaults for a newer struct: known fields set, the rest zero");
    bigger.known.backend = MOE_BACKEND_CPU;
    CHECK_OK(moe_engine_create(&bigger.known, &e));
    CHECK_OK(moe_engine_free(e));
    bigger.newer[1] = 7;
    CHECK_FAILS(moe_engine_create(&bigger.known, &e), MOE_ERROR_NOT_SUPPORTED, "does not know");

    CHECK_OK(moe_engine_default_options(&options, sizeof options));
    options.backend = MOE_BACKEND_CPU;
    options.cpu_threads = 1;
    CHECK_OK(moe_engine_create(&options, &e));
    int32_t backend = -1;
    char reason[8];
    size_t length = 0;
    CHECK_OK(moe_engine_info(e, &backend, reason, sizeof reason, &length));
    CHECK(backend == MOE_BACKEND_CPU, "the engine runs on backend %d, not the CPU it was asked for", backend);
    CHECK(length > sizeof reason - 1 && strlen(reason) == sizeof reason - 1,
          "a short buffer gets capacity - 1 bytes and a NUL, and length the full length (%zu)", length);
    CHECK_OK(moe_engine_info(e, NULL, NULL, 0, &length));
    CHECK_FAILS(moe_engine_info(e, NULL, NULL, 5, &length), MOE_ERROR_INVALID_ARGUMENT, "buffer is NULL");
    CHECK_OK(moe_engine_free(e));

#ifdef MOE_TEST_CPU_ONLY
    /* Every GPU backend, the simulator included, is refused naming it and the build; AUTO takes the CPU at once. */
    const struct {
        int32_t value;
        const char* name;
    } gpu[] = {{MOE_BACKEND_CUDA, "Cuda"}, {MOE_BACKEND_OPENCL, "OpenCL"}, {MOE_BACKEND_GPU_SIMULATOR, "GpuSimulator"}};
    for (size_t i = 0; i < 3; i++) {
        options.backend = gpu[i].value;
        e = (moe_engine*)&e;
        CHECK_FAILS(moe_engine_create(&options, &e), MOE_ERROR_BACKEND_UNAVAILABLE, gpu[i].name);
        CHECK(strstr(moe_last_error(), CPU_ONLY_MESSAGE) && strstr(moe_last_error(), "--target=Native"),
              "the refusal of %s does not say the build is " CPU_ONLY_MESSAGE " and where the GPU build is: %s",
              gpu[i].name, moe_last_error());
        CHECK(e == NULL, "the out-parameter was not cleared");
    }
    options.backend = MOE_BACKEND_AUTO;
    CHECK_OK(moe_engine_create(&options, &e));
    int32_t automatic = -1;
    char why[512];
    CHECK_OK(moe_engine_info(e, &automatic, why, sizeof why, NULL));
    CHECK(automatic == MOE_BACKEND_CPU && strstr(why, CPU_ONLY_MESSAGE),
          "AUTO chose backend %d (%s), not the CPU for being " CPU_ONLY_MESSAGE, automatic, why);
    CHECK_OK(moe_engine_free(e));
#else
    /* Backends this build may lack: created, or unavailable with a message naming them; never invalid. */
    const struct {
        int32_t value;
        const char* name;
    } optional[] = {{MOE_BACKEND_CUDA, "Cuda"}, {MOE_BACKEND_OPENCL, "OpenCL"}};
    for (size_t i = 0; i < 2; i++) {
        options.backend = optional[i].value;
        e = NULL;
        moe_status status = moe_engine_create(&options, &e);
        if (status == MOE_OK) {
            CHECK_OK(moe_engine_free(e));
        } else {
            expect_failure(status, MOE_ERROR_BACKEND_UNAVAILABLE, optional[i].name, "create on an optional backend",
                           __FILE__, __LINE__);
        }
    }
    /* The GPU kernels on ILGPU's CPU accelerator: present everywhere, and reported as asked for. */
    options.backend = MOE_BACKEND_GPU_SIMULATOR;
    CHECK_OK(moe_engine_create(&options, &e));
    int32_t simulated = -1;
    CHECK_OK(moe_engine_info(e, &simulated, NULL, 0, NULL));
    CHECK(simulated == MOE_BACKEND_GPU_SIMULATOR, "the simulator engine reports backend %d", simulated);
    CHECK_OK(moe_engine_free(e));
#endif
    options.backend = 42;
    CHECK_FAILS(moe_engine_create(&options, &e), MOE_ERROR_INVALID_ARGUMENT, "backend is 42");
    options.backend = MOE_BACKEND_AUTO;
    options.cpu_threads = -1;
    CHECK_FAILS(moe_engine_create(&options, &e), MOE_ERROR_INVALID_ARGUMENT, "CpuThreads");

    moe_library* l = (moe_library*)&l;
    library_options.struct_size = 8;
    CHECK_FAILS(moe_library_load_with_options((const char* const*)fixture.paths, 1, &library_options, &l),
                MOE_ERROR_INVALID_ARGUMENT, "moe_library_options.struct_size is 8");
    CHECK(l == NULL, "the out-parameter was not cleared");

    moe_router* r = (moe_router*)&r;
    arrow.struct_size = 0;
    CHECK_FAILS(moe_router_create_arrow(q0, &arrow, &r), MOE_ERROR_INVALID_ARGUMENT, "moe_arrow_options.struct_size");
    CHECK(r == NULL, "the out-parameter was not cleared");
    linear.struct_size = 3;
    float prototypes[EXPERTS * D_IN] = {0};
    CHECK_FAILS(moe_router_create_linear(prototypes, EXPERTS * D_IN, EXPERTS, D_IN, &linear, &r),
                MOE_ERROR_INVALID_ARGUMENT, "moe_linear_router_options.struct_size");
}

/* cpu_threads is at most 4 x the processors .NET counts; 20000 once aborted the process while its threads started. */
static void test_cpu_threads_bound(void)
{
    moe_engine_options options;
    CHECK_OK(moe_engine_default_options(&options, sizeof options));
    options.backend = MOE_BACKEND_CPU;
    moe_engine* e = (moe_engine*)&e;
    options.cpu_threads = 20000;
    CHECK_FAILS(moe_engine_create(&options, &e), MOE_ERROR_INVALID_ARGUMENT, "CpuThreads is 20000");
    CHECK(e == NULL, "the out-parameter was not cleared");

    /* The message states the bound; the processors .NET counts are at most those this process may run on. */
    const char* bound_text = strstr(moe_last_error(), "it must be 0 (every processor) to ");
    int bound = 0, processors = 0;
    CHECK(bound_text && sscanf(bound_text, "it must be 0 (every processor) to %d (4 %*s %d processors)", &bound,
                               &processors) == 2,
          "the message \"%s\" does not state the bound", moe_last_error());
    cpu_set_t allowed;
    CHECK(sched_getaffinity(0, sizeof allowed, &allowed) == 0, "sched_getaffinity: %s", strerror(errno));
    CHECK(processors >= 1 && processors <= CPU_COUNT(&allowed) && bound == 4 * processors,
          "the bound is %d for %d processors; this process may run on %d", bound, processors, CPU_COUNT(&allowed));
    if (bound < 1) {
        return;
    }
    options.cpu_threads = bound;
    CHECK_OK(moe_engine_create(&options, &e));
    CHECK_OK(moe_engine_free(e));
    const int32_t refused[] = {bound + 1, INT32_MAX, INT32_MIN};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        char fragment[64];
        snprintf(fragment, sizeof fragment, "CpuThreads is %d; it must be 0 (every processor) to %d", (int)refused[i],
                 bound);
        options.cpu_threads = refused[i];
        CHECK_FAILS(moe_engine_create(&options, &e), MOE_ERROR_INVALID_ARGUMENT, fragment);
    }
}

static void test_library_queries(void)
{
    size_t experts = 0, modules = 0, length = 0;
    CHECK_OK(moe_library_info(library, &experts, &modules));
    CHECK(experts == EXPERTS && modules == 3, "the library has %zu experts and %zu modules", experts, modules);
    char name[128];
    CHECK_OK(moe_library_expert_name(library, 3, name, sizeof name, &length));
    CHECK(strcmp(name, fixture.experts[3].name) == 0 && length == strlen(name), "expert 3 is named \"%s\"", name);
    CHECK_FAILS(moe_library_expert_name(library, EXPERTS, name, sizeof name, &length), MOE_ERROR_INVALID_ARGUMENT,
                "expert is 5");

    /* Modules come in ordinal name order: layers.0.q_proj, layers.0.v_proj, layers.1.q_proj. */
    const char* expected[] = {"base_model.model.model.layers.0.self_attn.q_proj",
                              "base_model.model.model.layers.0.self_attn.v_proj",
                              "base_model.model.model.layers.1.self_attn.q_proj"};
    for (size_t m = 0; m < 3; m++) {
        moe_module* module = NULL;
        CHECK_OK(moe_library_module(library, m, &module));
        CHECK_OK(moe_module_name(module, name, sizeof name, &length));
        CHECK(strcmp(name, expected[m]) == 0, "module %zu is \"%s\", expected \"%s\"", m, name, expected[m]);
    }
    moe_module* found = NULL;
    CHECK_OK(moe_library_find_module(library, expected[1], &found));
    CHECK(found == v0, "the full name and a dot-boundary suffix find the same module handle");
    size_t d_in = 0, d_out = 0, e = 0, max_rank = 0, top = 0;
    CHECK_OK(moe_module_info(v0, &d_in, &d_out, &e, &max_rank));
    for (int i = 0; i < EXPERTS; i++) {
        top = fixture.experts[i].rank > (int)top ? (size_t)fixture.experts[i].rank : top;
    }
    CHECK(d_in == D_IN && d_out == D_OUT_V && e == EXPERTS && max_rank == top,
          "v_proj: d_in %zu, d_out %zu, E %zu, max rank %zu (expected %d, %d, %d, %zu)", d_in, d_out, e, max_rank,
          D_IN, D_OUT_V, EXPERTS, top);
    CHECK_OK(moe_module_info(q0, NULL, NULL, NULL, NULL));
    CHECK_FAILS(moe_library_module(library, 3, &found), MOE_ERROR_INVALID_ARGUMENT, "index is 3");
    CHECK(found == NULL, "the out-parameter was not cleared");
}

/* Forward with `router` over random x and base; checks the decision with `check` and y against the reference. */
typedef void (*decision_check)(const float* x, int tokens, const int32_t* ids, const float* weights, int k,
                               double* reference_weights, void* context);

static void run_routed(moe_module* module, int module_index, moe_router* router, int tokens, decision_check check,
                       void* context, const char* what)
{
    const int d_out = MODULES[module_index].output_dim;
    size_t experts = 0, k = 0;
    CHECK_OK(moe_router_info(router, &experts, &k));
    float* x = random_floats((size_t)tokens * D_IN, 1.0);
    float* base = random_floats((size_t)tokens * d_out, 1.0);
    float* y = malloc(sizeof(float) * (size_t)tokens * d_out);
    int32_t* ids = malloc(sizeof(int32_t) * (size_t)tokens * k);
    float* weights = malloc(sizeof(float) * (size_t)tokens * k);
    double* reference_weights = malloc(sizeof(double) * (size_t)tokens * k);
    double* reference = malloc(sizeof(double) * (size_t)tokens * d_out);
    for (int i = 0; i < tokens * d_out; i++) {
        y[i] = NAN; /* base is given, so y's contents must not matter */
    }
    CHECK_OK(moe_forward(session, module, router, x, (size_t)tokens * D_IN, base, y, (size_t)tokens * d_out, ids,
                         weights, (size_t)tokens * k));
    check(x, tokens, ids, weights, (int)k, reference_weights, context);
    fixture_reference_forward(&fixture, module_index, x, tokens, base, ids, reference_weights, (int)k, reference);
    check_close(y, reference, base, (size_t)tokens * d_out, (int)k, what);

    /* base NULL adds into y in place; base == y is the same; both must match the first result exactly. */
    float* again = malloc(sizeof(float) * (size_t)tokens * d_out);
    memcpy(again, base, sizeof(float) * (size_t)tokens * d_out);
    CHECK_OK(moe_forward(session, module, router, x, (size_t)tokens * D_IN, NULL, again, (size_t)tokens * d_out,
                         NULL, NULL, 0));
    CHECK(memcmp(again, y, sizeof(float) * (size_t)tokens * d_out) == 0, "%s: base NULL gives another y", what);
    memcpy(again, base, sizeof(float) * (size_t)tokens * d_out);
    CHECK_OK(moe_forward(session, module, router, x, (size_t)tokens * D_IN, again, again, (size_t)tokens * d_out,
                         ids, NULL, (size_t)tokens * k));
    CHECK(memcmp(again, y, sizeof(float) * (size_t)tokens * d_out) == 0, "%s: base == y gives another y", what);
    free(again);
    free(x);
    free(base);
    free(y);
    free(ids);
    free(weights);
    free(reference_weights);
    free(reference);
}

/* Dense routers: every token gets every expert in the order of `expected` (descending weight, ties to the
 * lower id) with exactly the given weights. */
static void check_dense(const float* x, int tokens, const int32_t* ids, const float* weights, int k,
                        double* reference_weights, void* context)
{
    const float* given = context;
    (void)x;
    int order[EXPERTS];
    for (int e = 0; e < EXPERTS; e++) {
        order[e] = e;
    }
    for (int i = 1; i < EXPERTS; i++) { /* insertion sort: stable, so ties keep the lower id first */
        for (int j = i; j > 0 && given[order[j]] > given[order[j - 1]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    }
    CHECK(k == EXPERTS, "a dense router has k = E, not %d", k);
    for (int t = 0; t < tokens; t++) {
        for (int s = 0; s < k; s++) {
            CHECK(ids[t * k + s] == order[s] && weights[t * k + s] == given[order[s]],
                  "token %d slot %d: expert %d weight %.9g, expected expert %d weight %.9g", t, s, ids[t * k + s],
                  (double)weights[t * k + s], order[s], (double)given[order[s]]);
            reference_weights[t * k + s] = given[ids[t * k + s]];
        }
    }
}

static void test_uniform(void)
{
    moe_router* router = NULL;
    CHECK_OK(moe_router_create_uniform(EXPERTS, &router));
    float weights[EXPERTS];
    for (int e = 0; e < EXPERTS; e++) {
        weights[e] = 1.0f / EXPERTS;
    }
    run_routed(q0, Q0, router, 7, check_dense, weights, "uniform");
    CHECK_OK(moe_router_free(router));
}

static void test_fixed(void)
{
    float weights[EXPERTS];
    fixture_fill_normal(&rng, weights, EXPERTS, 1.0);
    weights[3] = weights[1]; /* a tie: expert 1 must come first */
    moe_router* router = NULL;
    CHECK_OK(moe_router_create_fixed(weights, EXPERTS, &router));
    run_routed(v0, V0, router, 6, check_dense, weights, "fixed");
    CHECK_OK(moe_router_free(router));
}

/* ---- Library options: names, base models, warnings, lazy loading ---- */

/* Expert e written again at <fixture root>/<relative>, with config_fields added to its adapter_config.json. */
static const char* write_adapter(int e, const char* relative, const char* config_fields, char* path, size_t capacity)
{
    snprintf(path, capacity, "%s/%s", fixture.root, relative);
    CHECK(fixture_write_adapter(&fixture, e, path, config_fields) == 0, "could not write %s: %s", path,
          strerror(errno));
    return path;
}

/* Runs call(context) with stderr sent to a file and returns what was written there (malloc'd), or NULL, having
 * failed the case, when stderr could not be redirected (call did not run). */
static char* capture_stderr(void (*call)(void* context), void* context)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/stderr-XXXXXX", fixture.root);
    int file = mkstemp(path);
    fflush(stderr);
    int saved = file < 0 ? -1 : dup(STDERR_FILENO);
    if (saved < 0 || dup2(file, STDERR_FILENO) < 0) {
        fail(__FILE__, __LINE__, "could not redirect stderr to %s: %s", path, strerror(errno));
        return NULL;
    }
    call(context);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    off_t size = lseek(file, 0, SEEK_END);
    char* text = calloc((size_t)size + 1, 1);
    CHECK(pread(file, text, (size_t)size, 0) == size, "could not read back %s", path);
    close(file);
    unlink(path);
    return text;
}

typedef struct library_load {
    const char* const* directories;
    size_t count;
    const moe_library_options* options;
    moe_library** loaded;
    moe_status* status;
} library_load;

static void run_library_load(void* context)
{
    const library_load* load = context;
    *load->status = load->options
                        ? moe_library_load_with_options(load->directories, load->count, load->options, load->loaded)
                        : moe_library_load(load->directories, load->count, load->loaded);
}

/* Loads with stderr sent to a file and returns what was written there (malloc'd). options NULL: through
 * moe_library_load. */
static char* load_capturing_stderr(const char* const* directories, size_t count, const moe_library_options* options,
                                   moe_library** loaded, moe_status* status)
{
    library_load load = {directories, count, options, loaded, status};
    char* text = capture_stderr(run_library_load, &load);
    if (!text) {
        *loaded = NULL;
        *status = MOE_ERROR_INTERNAL;
        return strdup("");
    }
    return text;
}

/* Loads directories with names (options NULL: moe_library_load) and checks the experts' names. */
static void check_expert_names(const char* const* directories, size_t count, const moe_library_options* options,
                               const char* const* expected)
{
    moe_library* l = NULL;
    CHECK_OK(options ? moe_library_load_with_options(directories, count, options, &l)
                     : moe_library_load(directories, count, &l));
    for (size_t e = 0; l && e < count; e++) {
        char name[PATH_MAX];
        size_t length = 0;
        CHECK_OK(moe_library_expert_name(l, e, name, sizeof name, &length));
        CHECK(strcmp(name, expected[e]) == 0 && length == strlen(expected[e]), "expert %zu is named \"%s\", not \"%s\"",
              e, name, expected[e]);
    }
    CHECK_OK(moe_library_free(l));
}

static void test_library_names(void)
{
    char run1[PATH_MAX + 32], run2[PATH_MAX + 32], a[PATH_MAX + 64], b[PATH_MAX + 64];
    snprintf(run1, sizeof run1, "%s/run1", fixture.root);
    snprintf(run2, sizeof run2, "%s/run2", fixture.root);
    CHECK(mkdir(run1, 0700) == 0 && mkdir(run2, 0700) == 0, "could not create run1 and run2: %s", strerror(errno));
    const char* paths[] = {write_adapter(0, "run1/adapter", NULL, a, sizeof a),
                           write_adapter(1, "run2/adapter", NULL, b, sizeof b)};

    /* Same-named directories take their parents' names; given names are kept as they are. */
    check_expert_names(paths, 2, NULL, (const char* const[]){"run1/adapter", "run2/adapter"});
    moe_library_options options;
    CHECK_OK(moe_library_default_options(&options, sizeof options));
    check_expert_names(paths, 2, &options, (const char* const[]){"run1/adapter", "run2/adapter"});
    options.names = (const char* const[]){NULL, NULL};
    check_expert_names(paths, 2, &options, (const char* const[]){"run1/adapter", "run2/adapter"});
    options.names = (const char* const[]){"math", NULL};
    check_expert_names(paths, 2, &options, (const char* const[]){"math", "adapter"});
    const char* twice[] = {a, a};
    options.names = (const char* const[]){"x", "y"};
    check_expert_names(twice, 2, &options, (const char* const[]){"x", "y"});

    moe_library* l = (moe_library*)&l;
    options.names = (const char* const[]){"same", "same"};
    CHECK_FAILS(moe_library_load_with_options(paths, 2, &options, &l), MOE_ERROR_INVALID_ARGUMENT,
                "experts 0 and 1 are both named 'same'");
    CHECK(strstr(moe_last_error(), "/run1/adapter") && strstr(moe_last_error(), "/run2/adapter"),
          "the message \"%s\" does not name both directories", moe_last_error());
    CHECK(l == NULL, "the out-parameter was not cleared");
    CHECK_FAILS(moe_library_load(twice, 2, &l), MOE_ERROR_INVALID_ARGUMENT, "cannot be told apart");
    options.names = (const char* const[]){NULL, "bad\nname"};
    CHECK_FAILS(moe_library_load_with_options(paths, 2, &options, &l), MOE_ERROR_INVALID_ARGUMENT,
                "control characters");

    fixture_remove_adapter(a);
    fixture_remove_adapter(b);
    rmdir(run1);
    rmdir(run2);
}

/* Experts of different base models: a warning on stderr by default, refused when strict. */
static void test_library_base_models(void)
{
    char a[PATH_MAX + 64], b[PATH_MAX + 64];
    const char* paths[] = {
        write_adapter(0, "gpt2-tuned", "\"base_model_name_or_path\": \"gpt2\"", a, sizeof a),
        write_adapter(1, "distil-tuned", "\"base_model_name_or_path\": \"distilgpt2\"", b, sizeof b),
    };
    const char* models = "different base models: gpt2 (expert 'gpt2-tuned'); distilgpt2 (expert 'distil-tuned')";
    const char* prefix = "moerging: warning: ";
    moe_library_options options;
    CHECK_OK(moe_library_default_options(&options, sizeof options));
    moe_library* l = NULL;
    moe_status status;

    /* Default options and moe_library_load alike: loaded, with one prefixed warning line. */
    for (int through_options = 0; through_options < 2; through_options++) {
        char* written = load_capturing_stderr(paths, 2, through_options ? &options : NULL, &l, &status);
        CHECK(status == MOE_OK, "the load returned %s: %s", moe_status_name(status), moe_last_error());
        CHECK(strncmp(written, prefix, strlen(prefix)) == 0 && strstr(written, models) &&
                  strchr(written, '\n') == written + strlen(written) - 1,
              "stderr holds \"%s\", not one line \"%s...%s...\"", written, prefix, models);
        free(written);
        CHECK_OK(moe_library_free(l));
    }

    options.quiet = 1;
    char* written = load_capturing_stderr(paths, 2, &options, &l, &status);
    CHECK(status == MOE_OK && strcmp(written, "") == 0, "a quiet load returned %s and wrote \"%s\"",
          moe_status_name(status), written);
    free(written);
    CHECK_OK(moe_library_free(l));

    options.quiet = 0;
    options.strict = 1;
    l = (moe_library*)&l;
    written = load_capturing_stderr(paths, 2, &options, &l, &status);
    expect_failure(status, MOE_ERROR_INVALID_ARGUMENT, models, "a strict load", __FILE__, __LINE__);
    CHECK(l == NULL, "the out-parameter was not cleared");
    CHECK(strcmp(written, "") == 0, "a refused load wrote \"%s\"", written);
    free(written);

    /* The fixture's experts name no base model: nothing to compare, so strict loads them with the gpt2 one. */
    const char* unknown_and_gpt2[] = {fixture.paths[2], a};
    written = load_capturing_stderr(unknown_and_gpt2, 2, &options, &l, &status);
    CHECK(status == MOE_OK && strcmp(written, "") == 0, "a strict load of one known base model returned %s (%s) and "
          "wrote \"%s\"", moe_status_name(status), moe_last_error(), written);
    free(written);
    CHECK_OK(moe_library_free(l));

    fixture_remove_adapter(a);
    fixture_remove_adapter(b);
}

/* A lazy library forwards as the reference does: its factors are read on first use. */
static void test_library_lazy(void)
{
    moe_library_options options;
    CHECK_OK(moe_library_default_options(&options, sizeof options));
    options.lazy = 1;
    moe_library* lazy = NULL;
    moe_module* module = NULL;
    moe_router* router = NULL;
    CHECK_OK(moe_library_load_with_options((const char* const*)fixture.paths, EXPERTS, &options, &lazy));
    CHECK_OK(moe_library_find_module(lazy, "model.layers.0.self_attn.v_proj", &module));
    CHECK_OK(moe_router_create_uniform(EXPERTS, &router));
    float weights[EXPERTS];
    for (int e = 0; e < EXPERTS; e++) {
        weights[e] = 1.0f / EXPERTS;
    }
    run_routed(module, V0, router, 5, check_dense, weights, "lazy uniform");
    CHECK_OK(moe_router_free(router));
    CHECK_OK(moe_library_free(lazy));
}

/* Score-based routers: scores computed here in float64 from the prototypes. */
typedef struct linear_reference {
    const double* prototypes; /* [E, D_IN] */
    int normalization;
    int score_function;
    double temperature;
    const float* bias;
    const char* what;
} linear_reference;

static void check_linear(const float* x, int tokens, const int32_t* ids, const float* weights, int k,
                         double* reference_weights, void* context)
{
    const linear_reference* ref = context;
    for (int t = 0; t < tokens; t++) {
        double z[D_IN], mean = 0, variance = 0, norm = 0, scores[EXPERTS];
        for (int i = 0; i < D_IN; i++) {
            z[i] = x[t * D_IN + i];
            mean += z[i] / D_IN;
            norm += z[i] * z[i];
        }
        for (int i = 0; i < D_IN; i++) {
            variance += (z[i] - mean) * (z[i] - mean) / D_IN;
        }
        for (int i = 0; i < D_IN; i++) {
            if (ref->normalization == MOE_NORMALIZATION_LAYER_NORM) {
                z[i] = (z[i] - mean) / sqrt(variance + 1e-5);
            } else if (ref->normalization == MOE_NORMALIZATION_L2) {
                z[i] /= fmax(sqrt(norm), 1e-12);
            }
        }
        for (int e = 0; e < EXPERTS; e++) {
            double dot = 0;
            for (int i = 0; i < D_IN; i++) {
                dot += z[i] * ref->prototypes[e * D_IN + i];
            }
            scores[e] = (ref->score_function == MOE_SCORE_ABSOLUTE ? fabs(dot) : dot) / ref->temperature +
                        (ref->bias ? ref->bias[e] : 0.0);
        }
        char where[96];
        snprintf(where, sizeof where, "%s, token %d", ref->what, t);
        check_routing(scores, EXPERTS, ids + t * k, weights + t * k, k, reference_weights + t * k, where);
    }
}

/* Arrow's prototypes of module Q0, computed from the fixture's float64 factors: the reference every Arrow test
 * routes against. */
static void reference_prototypes(double prototypes[EXPERTS * D_IN])
{
    for (int e = 0; e < EXPERTS; e++) {
        CHECK(top_right_singular_vector(&fixture.experts[e], Q0, D_IN, D_OUT, prototypes + e * D_IN),
              "the reference singular vector of expert %d did not converge", e);
    }
}

static void test_arrow(void)
{
    double prototypes[EXPERTS * D_IN];
    reference_prototypes(prototypes);
    moe_arrow_options options;
    CHECK_OK(moe_arrow_default_options(&options, sizeof options));
    options.top_k = 2;
    options.temperature = (float)(0.5 + fixture_uniform(&rng));
    moe_router* router = NULL;
    CHECK_OK(moe_router_create_arrow(q0, &options, &router));
    size_t k = 0;
    CHECK_OK(moe_router_info(router, NULL, &k));
    CHECK(k == 2, "Arrow top-2 has k = %zu", k);
    linear_reference ref = {prototypes, MOE_NORMALIZATION_NONE, MOE_SCORE_ABSOLUTE, options.temperature, NULL, "arrow"};
    run_routed(q0, Q0, router, 9, check_linear, &ref, "arrow");
    CHECK_OK(moe_router_free(router));
}

/* An Arrow router from options (NULL: none) must keep expected_k experts with the given temperature. */
static void check_arrow(moe_module* module, const moe_arrow_options* options, const double* prototypes,
                        size_t expected_k, double temperature, const char* what)
{
    moe_router* router = NULL;
    size_t k = 0;
    CHECK_OK(moe_router_create_arrow(module, options, &router));
    CHECK_OK(moe_router_info(router, NULL, &k));
    CHECK(k == expected_k, "%s: k = %zu, expected %zu", what, k, expected_k);
    if (prototypes) {
        linear_reference ref = {prototypes, MOE_NORMALIZATION_NONE, MOE_SCORE_ABSOLUTE, temperature, NULL, what};
        run_routed(module, Q0, router, 6, check_linear, &ref, what);
    }
    CHECK_OK(moe_router_free(router));
}

/* top_k and temperature 0 (the defaults) take the experts' arrow_config values, else top-3 (at most E) and 1. */
static void test_arrow_library_defaults(void)
{
    double prototypes[EXPERTS * D_IN];
    reference_prototypes(prototypes);
    char dirs[EXPERTS][PATH_MAX + 64];
    const char* paths[EXPERTS];
    for (int e = 0; e < EXPERTS; e++) {
        char relative[32];
        snprintf(relative, sizeof relative, "arrow-%d", e);
        paths[e] = write_adapter(e, relative, "\"arrow_config\": {\"top_k\": 2, \"router_temperature\": 0.625}",
                                 dirs[e], sizeof dirs[e]);
    }
    moe_library* configured = NULL;
    moe_module* module = NULL;
    CHECK_OK(moe_library_load(paths, EXPERTS, &configured));
    CHECK_OK(moe_library_find_module(configured, "layers.0.self_attn.q_proj", &module));
    moe_arrow_options options;
    CHECK_OK(moe_arrow_default_options(&options, sizeof options));
    check_arrow(module, NULL, prototypes, 2, 0.625, "arrow_config, options NULL");
    check_arrow(module, &options, prototypes, 2, 0.625, "arrow_config, default options");
    options.top_k = 4;
    check_arrow(module, &options, prototypes, 4, 0.625, "arrow_config, top_k 4");
    options.top_k = 0;
    options.temperature = 1.5f;
    check_arrow(module, &options, prototypes, 2, 1.5, "arrow_config, temperature 1.5");
    CHECK_OK(moe_library_free(configured));
    for (int e = 0; e < EXPERTS; e++) {
        fixture_remove_adapter(dirs[e]);
    }

    /* Without arrow_config: PEFT's top-3 and temperature 1, the top-k lowered to E when there are fewer experts. */
    CHECK_OK(moe_arrow_default_options(&options, sizeof options));
    check_arrow(q0, &options, prototypes, 3, 1.0, "no arrow_config");
    moe_library* pair = NULL;
    CHECK_OK(moe_library_load((const char* const*)fixture.paths, 2, &pair));
    CHECK_OK(moe_library_find_module(pair, "layers.0.self_attn.q_proj", &module));
    check_arrow(module, NULL, NULL, 2, 1.0, "no arrow_config, 2 experts");
    CHECK_OK(moe_library_free(pair));
}

static void test_linear(void)
{
    for (int normalization = 0; normalization < 3; normalization++) {
        for (int score = 0; score < 2; score++) {
            float prototypes[EXPERTS * D_IN], bias[EXPERTS];
            double wide[EXPERTS * D_IN];
            fixture_fill_normal(&rng, prototypes, EXPERTS * D_IN, 1.0 / sqrt(D_IN));
            fixture_fill_normal(&rng, bias, EXPERTS, 0.3);
            for (int i = 0; i < EXPERTS * D_IN; i++) {
                wide[i] = prototypes[i];
            }
            moe_linear_router_options options;
            CHECK_OK(moe_linear_router_default_options(&options, sizeof options));
            options.top_k = 1 + (int)(fixture_next(&rng) % EXPERTS);
            options.temperature = (float)(0.3 + fixture_uniform(&rng));
            options.normalization = normalization;
            options.score_function = score;
            int with_bias = (normalization + score) % 2;
            options.bias = with_bias ? bias : NULL;
            options.bias_count = with_bias ? EXPERTS : 0;
            moe_router* router = NULL;
            CHECK_OK(moe_router_create_linear(prototypes, EXPERTS * D_IN, EXPERTS, D_IN, &options, &router));
            char what[64];
            snprintf(what, sizeof what, "linear (normalization %d, score %d, top-%d%s)", normalization, score,
                     options.top_k, with_bias ? ", bias" : "");
            linear_reference ref = {wide, normalization, score, options.temperature, options.bias, what};
            run_routed(v0, V0, router, 8, check_linear, &ref, what);
            CHECK_OK(moe_router_free(router));
        }
    }
}

static void test_assigned(void)
{
    enum { T = 10, K = 3 };
    int32_t ids[T * K];
    float weights[T * K];
    double wide[T * K];
    for (int i = 0; i < T * K; i++) {
        ids[i] = (int32_t)(fixture_next(&rng) % (EXPERTS + 1)) - 1; /* -1 (empty) to E-1, repeats allowed */
        weights[i] = ids[i] < 0 && i % 2 ? NAN : (float)fixture_normal(&rng); /* empty slots' weights are ignored */
        wide[i] = ids[i] < 0 ? 0.0 : weights[i];
    }
    ids[0] = ids[1] = 2; /* a repeated expert adds up */
    wide[0] = weights[0] = 0.25f;
    wide[1] = weights[1] = -0.75f;
    float* x = random_floats(T * D_IN, 1.0);
    float* base = random_floats(T * D_OUT, 1.0);
    float y[T * D_OUT];
    double reference[T * D_OUT];
    CHECK_OK(moe_forward_assigned(session, q0, ids, weights, T * K, K, x, T * D_IN, base, y, T * D_OUT));
    fixture_reference_forward(&fixture, Q0, x, T, base, ids, wide, K, reference);
    check_close(y, reference, base, T * D_OUT, K, "assigned");
    free(x);
    free(base);
}

/* ---- The README's C example, built from README.md's text (readme_example.h) ---- */

enum { README_TOKENS = 7, README_EXPERTS = 3, README_K = 2 };

typedef struct readme_run {
    const float* x;
    const float* base;
    float* y;
    int32_t* ids;
    float* weights;
    int result;
} readme_run;

static void run_readme_example(void* context)
{
    readme_run* run = context;
    run->result = readme_example(run->x, README_TOKENS, D_IN, run->base, run->y, D_OUT, run->ids, run->weights);
}

/* The example, run in a directory whose adapters/math, adapters/code and adapters/legal are the fixture's experts 0
 * to 2 (so its expert ids are the fixture's), must print nothing and leave y = base + the Arrow top-2 mixture
 * (from moe_forward) + the same decision's mixture again (from moe_forward_assigned, base NULL), with the decision
 * the reference top-2 of |x . p_e| (temperature 1, the default without arrow_config). */
static void test_readme_example(void)
{
    const char* names[README_EXPERTS] = {"math", "code", "legal"};
    char directory[PATH_MAX + 32], adapters[PATH_MAX + 48], paths[README_EXPERTS][PATH_MAX + 64];
    snprintf(directory, sizeof directory, "%s/readme", fixture.root);
    snprintf(adapters, sizeof adapters, "%s/adapters", directory);
    CHECK(mkdir(directory, 0700) == 0 && mkdir(adapters, 0700) == 0, "could not create %s: %s", adapters,
          strerror(errno));
    for (int e = 0; e < README_EXPERTS; e++) {
        snprintf(paths[e], sizeof paths[e], "%s/%s", adapters, names[e]);
        CHECK(fixture_write_adapter(&fixture, e, paths[e], NULL) == 0, "could not write %s: %s", paths[e],
              strerror(errno));
    }
    enum { T = README_TOKENS, K = README_K, SLOTS = README_TOKENS * README_K };
    float* x = random_floats(T * D_IN, 1.0);
    float* base = random_floats(T * D_OUT, 1.0);
    float y[T * D_OUT], weights[SLOTS];
    int32_t ids[SLOTS];
    for (int i = 0; i < T * D_OUT; i++) {
        y[i] = NAN; /* base is given, so y's contents must not matter */
    }
    for (int i = 0; i < SLOTS; i++) {
        ids[i] = -7;
        weights[i] = NAN;
    }

    /* The example's paths are relative: it runs in `directory`, then the test returns to where it was. */
    readme_run run = {x, base, y, ids, weights, -1};
    char* printed = NULL;
    int here = open(".", O_RDONLY | O_DIRECTORY);
    if (here < 0 || chdir(directory) != 0) {
        fail(__FILE__, __LINE__, "could not change into %s: %s", directory, strerror(errno));
    } else {
        printed = capture_stderr(run_readme_example, &run);
        CHECK(fchdir(here) == 0, "could not return to the working directory: %s", strerror(errno));
    }
    if (here >= 0) {
        close(here);
    }
    CHECK(run.result == 0 && printed && !printed[0], "the README's example returned %d and printed \"%s\"",
          run.result, printed ? printed : "");

    int valid = run.result == 0;
    for (int i = 0; i < SLOTS; i++) {
        valid &= ids[i] >= 0 && ids[i] < README_EXPERTS;
    }
    CHECK(valid, "the README's example gave expert ids outside [0, %d)", README_EXPERTS);
    if (valid) {
        double prototypes[EXPERTS * D_IN], reference_weights[SLOTS], wide[SLOTS];
        reference_prototypes(prototypes);
        for (int t = 0; t < T; t++) {
            double scores[README_EXPERTS];
            for (int e = 0; e < README_EXPERTS; e++) {
                double dot = 0;
                for (int i = 0; i < D_IN; i++) {
                    dot += (double)x[t * D_IN + i] * prototypes[e * D_IN + i];
                }
                scores[e] = fabs(dot);
            }
            char where[64];
            snprintf(where, sizeof where, "the README's example, token %d", t);
            check_routing(scores, README_EXPERTS, ids + t * K, weights + t * K, K, reference_weights + t * K, where);
        }
        for (int i = 0; i < SLOTS; i++) {
            wide[i] = weights[i]; /* moe_forward_assigned took the engine's float weights as given */
        }
        double reference[T * D_OUT], again[T * D_OUT];
        fixture_reference_forward(&fixture, Q0, x, T, base, ids, reference_weights, K, reference);
        fixture_reference_forward(&fixture, Q0, x, T, NULL, ids, wide, K, again);
        for (int i = 0; i < T * D_OUT; i++) {
            reference[i] += again[i];
        }
        check_close(y, reference, base, T * D_OUT, 2 * K, "the README's example");
    }

    free(printed);
    free(x);
    free(base);
    for (int e = 0; e < README_EXPERTS; e++) {
        fixture_remove_adapter(paths[e]);
    }
    rmdir(adapters);
    rmdir(directory);
}

/* ---- 16-bit weight storage ---- */

/* x rounded to a binary format with `mantissa_bits` stored mantissa bits, normal numbers from 2^min_exponent up to
 * max_finite: to nearest, ties to even (nearbyint in the default rounding mode), straight from the definitions. */
static double round_to_format(double x, int mantissa_bits, int min_exponent, double max_finite)
{
    if (x == 0 || !isfinite(x)) {
        return x;
    }
    int exponent;
    frexp(x, &exponent); /* |x| = f 2^exponent, f in [0.5, 1) */
    exponent -= 1;       /* |x| in [2^exponent, 2^(exponent + 1)) */
    if (exponent < min_exponent) {
        exponent = min_exponent; /* subnormals share the smallest normals' quantum */
    }
    double quantum = ldexp(1.0, exponent - mantissa_bits);
    double rounded = nearbyint(x / quantum) * quantum;
    return fabs(rounded) > max_finite ? copysign(INFINITY, x) : rounded;
}

typedef struct weight_format {
    int32_t precision; /* a moe_weight_precision */
    int mantissa_bits;
    int min_exponent;
    double max_finite;
    const char* name;
} weight_format;

static float* rounded_copy(const float* values, size_t count, const weight_format* format)
{
    float* copy = malloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) {
        copy[i] = (float)round_to_format(values[i], format->mantissa_bits, format->min_exponent, format->max_finite);
    }
    return copy;
}

/* The fixture with every factor rounded to the format: the factors as an engine of that precision holds them. */
static void rounded_fixture(fixture_library* copy, const weight_format* format)
{
    *copy = fixture;
    copy->experts = malloc(sizeof(fixture_expert) * (size_t)fixture.expert_count);
    for (int e = 0; e < fixture.expert_count; e++) {
        copy->experts[e] = fixture.experts[e];
        for (int m = 0; m < fixture.module_count; m++) {
            size_t rank = (size_t)fixture.experts[e].rank;
            copy->experts[e].a[m] = rounded_copy(fixture.experts[e].a[m], rank * (size_t)fixture.modules[m].input_dim, format);
            copy->experts[e].b[m] = rounded_copy(fixture.experts[e].b[m], rank * (size_t)fixture.modules[m].output_dim, format);
        }
    }
}

static void free_rounded_fixture(fixture_library* copy)
{
    for (int e = 0; e < copy->expert_count; e++) {
        for (int m = 0; m < copy->module_count; m++) {
            free(copy->experts[e].a[m]);
            free(copy->experts[e].b[m]);
        }
    }
    free(copy->experts);
}

/* An engine and a library at BF16 and at F16: assigned and routed forwards against the float64 reference of the
 * rounded factors (and prototypes representable in the format, so routing is exact), the library loaded at the
 * precision and the float32 library (which the engine converts) giving the same bits; the new option fields'
 * defaults, bad values, a first-version struct, and BF16 refused on a GPU backend. */
static void test_weight_precision(void)
{
    moe_engine_options options;
    moe_library_options library_options;
    CHECK_OK(moe_engine_default_options(&options, sizeof options));
    CHECK_OK(moe_library_default_options(&library_options, sizeof library_options));
    CHECK(options.weight_precision == MOE_WEIGHT_PRECISION_F32 && library_options.weight_precision == MOE_WEIGHT_PRECISION_F32,
          "the default weight precision is F32 (engine %d, library %d)", options.weight_precision, library_options.weight_precision);
    options.backend = MOE_BACKEND_CPU;
    options.cpu_threads = 2;

    const weight_format formats[] = {
        {MOE_WEIGHT_PRECISION_BF16, 7, -126, 0x1.FEp127, "bf16"},
        {MOE_WEIGHT_PRECISION_F16, 10, -14, 65504.0, "f16"},
    };
    enum { T = 9, K = 2 };
    for (size_t f = 0; f < sizeof formats / sizeof formats[0]; f++) {
        const weight_format* format = &formats[f];
        moe_engine* sixteen = NULL;
        moe_session* s = NULL;
        moe_library* held = NULL;
        moe_module* held_q0 = NULL;
        options.weight_precision = format->precision;
        library_options.weight_precision = format->precision;
        CHECK_OK(moe_engine_create(&options, &sixteen));
        CHECK_OK(moe_session_create(sixteen, &s));
        CHECK_OK(moe_library_load_with_options((const char* const*)fixture.paths, EXPERTS, &library_options, &held));
        CHECK_OK(moe_library_find_module(held, "model.layers.0.self_attn.q_proj", &held_q0));
        fixture_library rounded;
        rounded_fixture(&rounded, format);

        int32_t ids[T * K];
        float weights[T * K];
        double wide_weights[T * K];
        for (int i = 0; i < T * K; i++) {
            ids[i] = (int32_t)(fixture_next(&rng) % (EXPERTS + 1)) - 1;
            weights[i] = (float)fixture_normal(&rng);
            wide_weights[i] = ids[i] < 0 ? 0.0 : weights[i];
        }
        float* x = random_floats(T * D_IN, 1.0);
        float* base = random_floats(T * D_OUT, 1.0);
        float y[T * D_OUT], converted[T * D_OUT];
        double reference[T * D_OUT];
        char what[64];
        snprintf(what, sizeof what, "%s assigned", format->name);
        CHECK_OK(moe_forward_assigned(s, held_q0, ids, weights, T * K, K, x, T * D_IN, base, y, T * D_OUT));
        fixture_reference_forward(&rounded, Q0, x, T, base, ids, wide_weights, K, reference);
        check_close(y, reference, base, T * D_OUT, K, what);
        CHECK_OK(moe_forward_assigned(s, q0, ids, weights, T * K, K, x, T * D_IN, base, converted, T * D_OUT));
        CHECK(memcmp(y, converted, sizeof y) == 0, "%s: the float32 library converted by the engine gives other bits", what);
        /* The float32 engine reads the library as it holds it: the rounded factors, widened. */
        snprintf(what, sizeof what, "%s library, F32 engine", format->name);
        CHECK_OK(moe_forward_assigned(session, held_q0, ids, weights, T * K, K, x, T * D_IN, base, converted, T * D_OUT));
        check_close(converted, reference, base, T * D_OUT, K, what);
        snprintf(what, sizeof what, "%s assigned", format->name);

        /* A linear router whose prototypes the format represents exactly. */
        float prototypes[EXPERTS * D_IN];
        double wide[EXPERTS * D_IN];
        fixture_fill_normal(&rng, prototypes, EXPERTS * D_IN, 1.0 / sqrt(D_IN));
        for (int i = 0; i < EXPERTS * D_IN; i++) {
            wide[i] = round_to_format(prototypes[i], format->mantissa_bits, format->min_exponent, format->max_finite);
            prototypes[i] = (float)wide[i];
        }
        moe_linear_router_options linear;
        CHECK_OK(moe_linear_router_default_options(&linear, sizeof linear));
        linear.top_k = K;
        linear.score_function = MOE_SCORE_ABSOLUTE;
        moe_router* router = NULL;
        CHECK_OK(moe_router_create_linear(prototypes, EXPERTS * D_IN, EXPERTS, D_IN, &linear, &router));
        int32_t routed_ids[T * K];
        float routed_weights[T * K];
        double routed_reference_weights[T * K];
        snprintf(what, sizeof what, "%s linear", format->name);
        CHECK_OK(moe_forward(s, held_q0, router, x, T * D_IN, base, y, T * D_OUT, routed_ids, routed_weights, T * K));
        linear_reference ref = {wide, MOE_NORMALIZATION_NONE, MOE_SCORE_ABSOLUTE, 1.0, NULL, what};
        check_linear(x, T, routed_ids, routed_weights, K, routed_reference_weights, &ref);
        fixture_reference_forward(&rounded, Q0, x, T, base, routed_ids, routed_reference_weights, K, reference);
        check_close(y, reference, base, T * D_OUT, K, what);
        CHECK_OK(moe_router_free(router));

        free(x);
        free(base);
        free_rounded_fixture(&rounded);
        CHECK_OK(moe_library_free(held));
        CHECK_OK(moe_session_free(s));
        CHECK_OK(moe_engine_free(sixteen));
    }

    moe_engine* e = (moe_engine*)&e;
    options.weight_precision = 9;
    CHECK_FAILS(moe_engine_create(&options, &e), MOE_ERROR_INVALID_ARGUMENT, "weight_precision is 9");
    CHECK(e == NULL, "the out-parameter was not cleared");
    library_options.weight_precision = -1;
    moe_library* l = (moe_library*)&l;
    CHECK_FAILS(moe_library_load_with_options((const char* const*)fixture.paths, EXPERTS, &library_options, &l),
                MOE_ERROR_INVALID_ARGUMENT, "weight_precision is -1");
    CHECK(l == NULL, "the out-parameter was not cleared");

    /* A caller of the first version: its struct ends at cpu_threads, so what lies beyond is not read. */
    options.struct_size = (uint32_t)(offsetof(moe_engine_options, cpu_threads) + sizeof options.cpu_threads);
    options.weight_precision = 9;
    CHECK_OK(moe_engine_create(&options, &e));
    CHECK_OK(moe_engine_free(e));

    CHECK_OK(moe_engine_default_options(&options, sizeof options));
    options.backend = MOE_BACKEND_GPU_SIMULATOR;
    options.weight_precision = MOE_WEIGHT_PRECISION_BF16;
#ifdef MOE_TEST_CPU_ONLY
    CHECK_FAILS(moe_engine_create(&options, &e), MOE_ERROR_BACKEND_UNAVAILABLE, CPU_ONLY_MESSAGE);
#else
    /* The GPU kernels store BF16 too. */
    CHECK_OK(moe_engine_create(&options, &e));
    CHECK_OK(moe_engine_free(e));
#endif
}

/* ---- Routers built from files: PHATGOOSE gates, centroids, a saved classifier ---- */

/* Writes each expert's [D_IN] vector for q0 into <expert directory>/<file_name> as "<module name><suffix>". */
static void write_expert_vectors(const char* file_name, const char* suffix, const float* vectors)
{
    char module_name[128], tensor[160], path[PATH_MAX + 64];
    CHECK_OK(moe_module_name(q0, module_name, sizeof module_name, NULL));
    snprintf(tensor, sizeof tensor, "%s%s", module_name, suffix);
    const char* names[] = {tensor};
    int ranks[] = {1};
    int64_t shapes[1][2] = {{D_IN, 0}};
    for (int e = 0; e < EXPERTS; e++) {
        const float* data[] = {vectors + e * D_IN};
        snprintf(path, sizeof path, "%s/%s", fixture.paths[e], file_name);
        CHECK(fixture_write_safetensors(path, 1, names, data, ranks, (const int64_t(*)[2])shapes) == 0,
              "could not write %s", path);
    }
}

static void remove_expert_files(const char* file_name)
{
    char path[PATH_MAX + 64];
    for (int e = 0; e < EXPERTS; e++) {
        snprintf(path, sizeof path, "%s/%s", fixture.paths[e], file_name);
        unlink(path);
    }
}

/* A classifier router file as `moerge train-router` writes it: weight [E, D_IN] and bias [E]. */
static void write_classifier(const char* path, const float* weight, const float* bias, int experts)
{
    const char* names[] = {"weight", "bias"};
    const float* data[] = {weight, bias};
    int ranks[] = {2, 1};
    int64_t shapes[2][2] = {{experts, D_IN}, {experts, 0}};
    CHECK(fixture_write_safetensors(path, 2, names, data, ranks, (const int64_t(*)[2])shapes) == 0,
          "could not write %s", path);
}

/* Builds a router with no options (the defaults must give k = default_k) and with top_k and a random
 * temperature, and checks both routers' forwards against the float64 scores of `ref`. */
typedef moe_status (*file_router_create)(const moe_routing_options* options, moe_router** router);

static void check_file_router(file_router_create create, linear_reference ref, size_t default_k, int top_k)
{
    moe_router* router = NULL;
    size_t k = 0;
    CHECK_OK(create(NULL, &router));
    CHECK_OK(moe_router_info(router, NULL, &k));
    CHECK(k == default_k, "%s: the default keeps %zu experts, not %zu", ref.what, k, default_k);
    ref.temperature = 1;
    run_routed(q0, Q0, router, 9, check_linear, &ref, ref.what);
    CHECK_OK(moe_router_free(router));

    moe_routing_options options;
    CHECK_OK(moe_routing_default_options(&options, sizeof options));
    CHECK(options.top_k == 0 && options.temperature == 1.0f, "routing defaults: top_k 0 (the router's), temperature 1");
    options.top_k = top_k;
    options.temperature = (float)(0.5 + fixture_uniform(&rng));
    CHECK_OK(create(&options, &router));
    CHECK_OK(moe_router_info(router, NULL, &k));
    CHECK(k == (size_t)top_k, "%s: top_k %d gives k = %zu", ref.what, top_k, k);
    ref.temperature = options.temperature;
    run_routed(q0, Q0, router, 7, check_linear, &ref, ref.what);
    CHECK_OK(moe_router_free(router));
}

static moe_status create_phatgoose(const moe_routing_options* options, moe_router** router)
{
    return moe_router_create_phatgoose(q0, (const char* const*)fixture.paths, EXPERTS, options, router);
}

static moe_status create_centroid(const moe_routing_options* options, moe_router** router)
{
    return moe_router_create_centroid(q0, (const char* const*)fixture.paths, EXPERTS, options, router);
}

static char classifier_path[PATH_MAX + 32];

static moe_status create_classifier(const moe_routing_options* options, moe_router** router)
{
    return moe_router_create_classifier(classifier_path, options, router);
}

static void test_phatgoose(void)
{
    float gates[EXPERTS * D_IN];
    double prototypes[EXPERTS * D_IN]; /* LayerNorm(g_e) / sqrt(d_in) */
    fixture_fill_normal(&rng, gates, EXPERTS * D_IN, 1.0);
    for (int e = 0; e < EXPERTS; e++) {
        const float* g = gates + e * D_IN;
        double mean = 0, variance = 0;
        for (int i = 0; i < D_IN; i++) {
            mean += g[i] / (double)D_IN;
        }
        for (int i = 0; i < D_IN; i++) {
            variance += (g[i] - mean) * (g[i] - mean) / D_IN;
        }
        for (int i = 0; i < D_IN; i++) {
            prototypes[e * D_IN + i] = (g[i] - mean) / sqrt(variance + 1e-5) / sqrt(D_IN);
        }
    }
    write_expert_vectors("phatgoose_gates.safetensors", ".phatgoose_gate", gates);
    linear_reference ref = {prototypes, MOE_NORMALIZATION_LAYER_NORM, MOE_SCORE_IDENTITY, 1, NULL, "phatgoose"};
    check_file_router(create_phatgoose, ref, 2, 3);
    remove_expert_files("phatgoose_gates.safetensors");
}

static void test_centroid(void)
{
    float centroids[EXPERTS * D_IN];
    double prototypes[EXPERTS * D_IN]; /* c_e / (|c_e| sqrt(d_in)) */
    fixture_fill_normal(&rng, centroids, EXPERTS * D_IN, 1.0);
    for (int e = 0; e < EXPERTS; e++) {
        const float* c = centroids + e * D_IN;
        double squares = 0;
        for (int i = 0; i < D_IN; i++) {
            squares += (double)c[i] * c[i];
        }
        for (int i = 0; i < D_IN; i++) {
            prototypes[e * D_IN + i] = c[i] / (sqrt(squares) * sqrt(D_IN));
        }
    }
    write_expert_vectors("centroids.safetensors", ".centroid", centroids);
    linear_reference ref = {prototypes, MOE_NORMALIZATION_NONE, MOE_SCORE_IDENTITY, 1, NULL, "centroid"};
    check_file_router(create_centroid, ref, EXPERTS, 2);
    remove_expert_files("centroids.safetensors");
}

static void test_classifier(void)
{
    float weight[EXPERTS * D_IN], bias[EXPERTS];
    double prototypes[EXPERTS * D_IN];
    fixture_fill_normal(&rng, weight, EXPERTS * D_IN, 1.0 / sqrt(D_IN));
    fixture_fill_normal(&rng, bias, EXPERTS, 0.5);
    for (int i = 0; i < EXPERTS * D_IN; i++) {
        prototypes[i] = weight[i];
    }
    snprintf(classifier_path, sizeof classifier_path, "%s/classifier.safetensors", fixture.root);
    write_classifier(classifier_path, weight, bias, EXPERTS);
    linear_reference ref = {prototypes, MOE_NORMALIZATION_NONE, MOE_SCORE_IDENTITY, 1, bias, "classifier"};
    check_file_router(create_classifier, ref, EXPERTS, 2);

    /* Not tied to a module: it routes v0 (the same d_in) too. */
    moe_router* router = NULL;
    CHECK_OK(create_classifier(NULL, &router));
    ref.what = "classifier on another module";
    run_routed(v0, V0, router, 5, check_linear, &ref, ref.what);
    CHECK_OK(moe_router_free(router));
    unlink(classifier_path);
}

/* ---- Threads: one library, one router, one session per thread; results equal one thread's, bit for bit ---- */

enum { THREADS = 8, THREAD_TOKENS = 6, ROUNDS = 25 };

typedef struct thread_work {
    moe_router* router;
    const float* x;         /* [THREAD_TOKENS, D_IN] */
    const float* expected;  /* y from the main thread */
    const int32_t* expected_ids;
    const float* expected_weights;
    pthread_barrier_t* start;
    int mismatches;
    int failures;
    char error[256];
} thread_work;

static void* thread_main(void* argument)
{
    thread_work* work = argument;
    moe_session* own = NULL;
    if (moe_session_create(engine, &own) != MOE_OK) {
        snprintf(work->error, sizeof work->error, "moe_session_create: %s", moe_last_error());
        work->failures++;
    }
    pthread_barrier_wait(work->start);
    float y[THREAD_TOKENS * D_OUT];
    int32_t ids[THREAD_TOKENS * 2];
    float weights[THREAD_TOKENS * 2];
    for (int round = 0; round < ROUNDS && own; round++) {
        memset(y, 0, sizeof y);
        if (moe_forward(own, q0, work->router, work->x, THREAD_TOKENS * D_IN, NULL, y, THREAD_TOKENS * D_OUT, ids,
                        weights, THREAD_TOKENS * 2) != MOE_OK) {
            snprintf(work->error, sizeof work->error, "moe_forward: %s", moe_last_error());
            work->failures++;
            break;
        }
        if (memcmp(y, work->expected, sizeof y) != 0 || memcmp(ids, work->expected_ids, sizeof ids) != 0 ||
            memcmp(weights, work->expected_weights, sizeof weights) != 0) {
            work->mismatches++;
        }
    }
    if (moe_session_free(own) != MOE_OK) {
        work->failures++;
    }
    return NULL;
}

static void test_threads(void)
{
    moe_arrow_options options;
    CHECK_OK(moe_arrow_default_options(&options, sizeof options));
    options.top_k = 2;
    moe_router* router = NULL;
    CHECK_OK(moe_router_create_arrow(q0, &options, &router));
    thread_work work[THREADS];
    float* x[THREADS];
    float expected[THREADS][THREAD_TOKENS * D_OUT];
    int32_t expected_ids[THREADS][THREAD_TOKENS * 2];
    float expected_weights[THREADS][THREAD_TOKENS * 2];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++) {
        x[i] = random_floats(THREAD_TOKENS * D_IN, 1.0);
        memset(expected[i], 0, sizeof expected[i]);
        CHECK_OK(moe_forward(session, q0, router, x[i], THREAD_TOKENS * D_IN, NULL, expected[i],
                             THREAD_TOKENS * D_OUT, expected_ids[i], expected_weights[i], THREAD_TOKENS * 2));
        work[i] = (thread_work){router, x[i], expected[i], expected_ids[i], expected_weights[i], &start, 0, 0, ""};
    }
    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++) {
        pthread_create(&threads[i], NULL, thread_main, &work[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        CHECK(work[i].failures == 0, "thread %d failed: %s", i, work[i].error);
        CHECK(work[i].mismatches == 0, "thread %d: %d of %d forwards differ from the single-thread result", i,
              work[i].mismatches, ROUNDS);
        free(x[i]);
    }
    pthread_barrier_destroy(&start);
    CHECK_OK(moe_router_free(router));
}

static void* fail_on_thread(void* argument)
{
    char* message = argument;
    moe_status status = moe_router_create_uniform(0, NULL);
    snprintf(message, 256, "%d|%s", (int)status, moe_last_error());
    return NULL;
}

static void test_errors_are_per_thread(void)
{
    moe_router* r = NULL;
    CHECK_FAILS(moe_router_create_uniform(0, &r), MOE_ERROR_INVALID_ARGUMENT, "expert_count is 0");
    char mine[256], theirs[256];
    snprintf(mine, sizeof mine, "%s", moe_last_error());
    pthread_t thread;
    pthread_create(&thread, NULL, fail_on_thread, theirs);
    pthread_join(thread, NULL);
    CHECK(strstr(theirs, "1|router (the out-parameter) is NULL") == theirs, "the other thread saw \"%s\"", theirs);
    CHECK(strcmp(mine, moe_last_error()) == 0, "another thread's failure changed this thread's message to \"%s\"",
          moe_last_error());
    CHECK_OK(moe_router_create_uniform(2, &r));
    CHECK(strcmp(mine, moe_last_error()) == 0, "a successful call changed the message");
    CHECK_OK(moe_router_free(r));
}

/* ---- Misuse ---- */

static void test_bad_handles(void)
{
    moe_router* router = NULL;
    CHECK_OK(moe_router_create_uniform(EXPERTS, &router));
    float x[2 * D_IN] = {0}, y[2 * D_OUT] = {0};
    const size_t xs = 2 * D_IN, ys = 2 * D_OUT;

    CHECK_FAILS(moe_forward(NULL, q0, router, x, xs, NULL, y, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "session is NULL");
    CHECK_FAILS(moe_forward(session, NULL, router, x, xs, NULL, y, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "module is NULL");
    CHECK_FAILS(moe_forward(session, q0, NULL, x, xs, NULL, y, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "router is NULL");
    int32_t one_id[2] = {0, 0};
    float one_weight[2] = {1, 1};
    CHECK_FAILS(moe_forward_assigned(NULL, q0, one_id, one_weight, 2, 1, x, xs, NULL, y, ys),
                MOE_ERROR_INVALID_ARGUMENT, "session is NULL");
    moe_session* s = (moe_session*)&s;
    CHECK_FAILS(moe_session_create(NULL, &s), MOE_ERROR_INVALID_ARGUMENT, "engine is NULL");
    CHECK(s == NULL, "the out-parameter was not cleared");
    CHECK_FAILS(moe_engine_create(NULL, NULL), MOE_ERROR_INVALID_ARGUMENT, "engine (the out-parameter) is NULL");
    CHECK_FAILS(moe_engine_info(NULL, NULL, NULL, 0, NULL), MOE_ERROR_INVALID_ARGUMENT, "engine is NULL");
    CHECK_FAILS(moe_library_info(NULL, NULL, NULL), MOE_ERROR_INVALID_ARGUMENT, "library is NULL");
    CHECK_FAILS(moe_module_info(NULL, NULL, NULL, NULL, NULL), MOE_ERROR_INVALID_ARGUMENT, "module is NULL");
    CHECK_FAILS(moe_module_name(NULL, NULL, 0, NULL), MOE_ERROR_INVALID_ARGUMENT, "module is NULL");
    CHECK_FAILS(moe_router_info(NULL, NULL, NULL), MOE_ERROR_INVALID_ARGUMENT, "router is NULL");
    moe_router* never = NULL;
    CHECK_FAILS(moe_router_create_arrow(NULL, NULL, &never), MOE_ERROR_INVALID_ARGUMENT, "module is NULL");
    CHECK_OK(moe_engine_free(NULL));
    CHECK_OK(moe_session_free(NULL));
    CHECK_OK(moe_library_free(NULL));
    CHECK_OK(moe_router_free(NULL));

    /* Double free, and use after free, are reported. */
    moe_router* freed = NULL;
    CHECK_OK(moe_router_create_uniform(EXPERTS, &freed));
    CHECK_OK(moe_router_free(freed));
    CHECK_FAILS(moe_router_free(freed), MOE_ERROR_INVALID_ARGUMENT, "router is not a live handle");
    CHECK_FAILS(moe_forward(session, q0, freed, x, xs, NULL, y, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "router is not a live handle");
    /* A new handle may reuse the freed slot; the old value must still be dead. */
    moe_router* reused = NULL;
    CHECK_OK(moe_router_create_uniform(EXPERTS, &reused));
    CHECK_FAILS(moe_router_info(freed, NULL, NULL), MOE_ERROR_INVALID_ARGUMENT, "not a live handle");
    CHECK_OK(moe_router_free(reused));

    /* Wrong kind, forged values. */
    CHECK_FAILS(moe_forward((moe_session*)router, q0, router, x, xs, NULL, y, ys, NULL, NULL, 0),
                MOE_ERROR_INVALID_ARGUMENT, "session is a moe_router handle, not a moe_session");
    CHECK_FAILS(moe_library_free((moe_library*)q0), MOE_ERROR_INVALID_ARGUMENT, "library is a moe_module handle");
    CHECK_FAILS(moe_forward((moe_session*)(void*)x, q0, router, x, xs, NULL, y, ys, NULL, NULL, 0),
                MOE_ERROR_INVALID_ARGUMENT, "session is not a live handle");
    CHECK_FAILS(moe_router_free((moe_router*)(uintptr_t)UINTPTR_MAX), MOE_ERROR_INVALID_ARGUMENT,
                "router is not a live handle");

    /* An engine outlives its sessions; a session's double free is reported. */
    moe_engine* e = NULL;
    CHECK_OK(moe_engine_create(NULL, &e));
    CHECK_OK(moe_session_create(e, &s));
    CHECK_FAILS(moe_engine_free(e), MOE_ERROR_INVALID_ARGUMENT, "1 live session");
    CHECK_OK(moe_session_free(s));
    CHECK_FAILS(moe_session_free(s), MOE_ERROR_INVALID_ARGUMENT, "session is not a live handle");
    CHECK_OK(moe_engine_free(e));
    CHECK_FAILS(moe_engine_free(e), MOE_ERROR_INVALID_ARGUMENT, "engine is not a live handle");
    CHECK_FAILS(moe_session_create(e, &s), MOE_ERROR_INVALID_ARGUMENT, "engine is not a live handle");

    /* Module handles die with their library; a router built from one lives on. */
    moe_library* other = NULL;
    moe_module* module = NULL;
    moe_router* arrow = NULL;
    CHECK_OK(moe_library_load((const char* const*)fixture.paths, EXPERTS, &other));
    CHECK_OK(moe_library_find_module(other, "layers.0.self_attn.q_proj", &module));
    CHECK_OK(moe_router_create_arrow(module, NULL, &arrow));
    CHECK_OK(moe_library_free(other));
    CHECK_FAILS(moe_library_free(other), MOE_ERROR_INVALID_ARGUMENT, "library is not a live handle");
    CHECK_FAILS(moe_module_info(module, NULL, NULL, NULL, NULL), MOE_ERROR_INVALID_ARGUMENT,
                "module is not a live handle");
    CHECK_OK(moe_router_info(arrow, NULL, NULL));
    CHECK_OK(moe_router_free(arrow));
    CHECK_OK(moe_router_free(router));
}

static void test_bad_sizes(void)
{
    enum { T = 3 };
    moe_router* uniform = NULL;
    CHECK_OK(moe_router_create_uniform(EXPERTS, &uniform));
    float x[T * D_IN], y[T * D_OUT], untouched[T * D_OUT], base[T * D_OUT];
    int32_t ids[T * EXPERTS];
    float weights[T * EXPERTS];
    fixture_fill_normal(&rng, x, T * D_IN, 1.0);
    fixture_fill_normal(&rng, y, T * D_OUT, 1.0);
    fixture_fill_normal(&rng, base, T * D_OUT, 1.0);
    memcpy(untouched, y, sizeof y);
    const size_t xs = T * D_IN, ys = T * D_OUT, slots = T * EXPERTS;

    CHECK_FAILS(moe_forward(session, q0, uniform, x, xs - 1, NULL, y, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "x_count is 47");
    CHECK_FAILS(moe_forward(session, q0, uniform, x, xs, base, y, ys + 1, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "y_count is 37");
    CHECK_FAILS(moe_forward(session, q0, uniform, x, xs, base, y, ys, ids, weights, slots - 1),
                MOE_ERROR_INVALID_ARGUMENT, "slot_count is 14");
    CHECK_FAILS(moe_forward(session, q0, uniform, x, xs, base, y, ys, NULL, NULL, slots), MOE_ERROR_INVALID_ARGUMENT,
                "both NULL");
    CHECK_FAILS(moe_forward(session, q0, uniform, NULL, xs, base, y, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "x is NULL");
    CHECK_FAILS(moe_forward(session, q0, uniform, x, xs, base, NULL, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "y is NULL");
    CHECK_FAILS(moe_forward(session, q0, uniform, x, xs, y + 1, y, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "base partly overlaps y");
    CHECK_FAILS(moe_forward(session, q0, uniform, x, (size_t)-1, base, y, ys, NULL, NULL, 0),
                MOE_ERROR_INVALID_ARGUMENT, "more than one call accepts");
    CHECK(memcmp(y, untouched, sizeof y) == 0, "a failing forward wrote into y");

    float shared[T * D_IN + T * D_OUT];
    CHECK_FAILS(moe_forward(session, q0, uniform, shared, xs, NULL, shared + 4, ys, NULL, NULL, 0),
                MOE_ERROR_INVALID_ARGUMENT, "x and y overlap");

    /* Routers that do not fit the module. */
    moe_router* wider = NULL;
    CHECK_OK(moe_router_create_uniform(EXPERTS + 1, &wider));
    CHECK_FAILS(moe_forward(session, q0, wider, x, xs, base, y, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "chooses among 6 experts");
    CHECK_OK(moe_router_free(wider));
    moe_router* arrow = NULL;
    CHECK_OK(moe_router_create_arrow(q0, NULL, &arrow));
    float y_v[T * D_OUT_V];
    CHECK_FAILS(moe_forward(session, v0, arrow, x, xs, NULL, y_v, T * D_OUT_V, NULL, NULL, 0),
                MOE_ERROR_INVALID_ARGUMENT, "the ArrowRouter was built for module");
    CHECK_OK(moe_router_free(arrow));
    float narrow_prototypes[EXPERTS * 8] = {1};
    moe_router* narrow = NULL;
    CHECK_OK(moe_router_create_linear(narrow_prototypes, EXPERTS * 8, EXPERTS, 8, NULL, &narrow));
    CHECK_FAILS(moe_forward(session, q0, narrow, x, xs, base, y, ys, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "scores rows of 8 values");
    CHECK_OK(moe_router_free(narrow));
    CHECK(memcmp(y, untouched, sizeof y) == 0, "a failing forward wrote into y");

    /* Router parameters. */
    moe_router* r = NULL;
    moe_arrow_options arrow_options;
    CHECK_OK(moe_arrow_default_options(&arrow_options, sizeof arrow_options));
    arrow_options.top_k = -1;
    CHECK_FAILS(moe_router_create_arrow(q0, &arrow_options, &r), MOE_ERROR_INVALID_ARGUMENT, "top-k must be in [1, 5]");
    arrow_options.top_k = EXPERTS + 1;
    CHECK_FAILS(moe_router_create_arrow(q0, &arrow_options, &r), MOE_ERROR_INVALID_ARGUMENT, "top-k must be in [1, 5]");
    arrow_options.top_k = 2;
    arrow_options.temperature = -1;
    CHECK_FAILS(moe_router_create_arrow(q0, &arrow_options, &r), MOE_ERROR_INVALID_ARGUMENT,
                "temperature must be positive");
    arrow_options.temperature = NAN;
    CHECK_FAILS(moe_router_create_arrow(q0, &arrow_options, &r), MOE_ERROR_INVALID_ARGUMENT,
                "temperature must be positive");
    float fixed_weights[EXPERTS] = {1, 2, NAN, 4, 5};
    CHECK_FAILS(moe_router_create_fixed(fixed_weights, EXPERTS, &r), MOE_ERROR_INVALID_ARGUMENT,
                "weight of expert 2 must be finite");
    CHECK_FAILS(moe_router_create_fixed(fixed_weights, 0, &r), MOE_ERROR_INVALID_ARGUMENT, "weights is empty");
    CHECK_FAILS(moe_router_create_fixed(NULL, 3, &r), MOE_ERROR_INVALID_ARGUMENT, "weights is NULL");
    CHECK_FAILS(moe_router_create_uniform(0, &r), MOE_ERROR_INVALID_ARGUMENT, "expert_count is 0");

    float prototypes[EXPERTS * D_IN] = {0.5f};
    float bias[EXPERTS] = {0};
    moe_linear_router_options linear;
    CHECK_OK(moe_linear_router_default_options(&linear, sizeof linear));
    CHECK_FAILS(moe_router_create_linear(prototypes, EXPERTS * D_IN - 1, EXPERTS, D_IN, &linear, &r),
                MOE_ERROR_INVALID_ARGUMENT, "prototype_count is 79");
    CHECK_FAILS(moe_router_create_linear(prototypes, 0, 0, D_IN, &linear, &r), MOE_ERROR_INVALID_ARGUMENT,
                "expert_count (0)");
    linear.normalization = 9;
    CHECK_FAILS(moe_router_create_linear(prototypes, EXPERTS * D_IN, EXPERTS, D_IN, &linear, &r),
                MOE_ERROR_INVALID_ARGUMENT, "normalization is 9");
    linear.normalization = MOE_NORMALIZATION_L2;
    linear.score_function = -1;
    CHECK_FAILS(moe_router_create_linear(prototypes, EXPERTS * D_IN, EXPERTS, D_IN, &linear, &r),
                MOE_ERROR_INVALID_ARGUMENT, "score_function is -1");
    linear.score_function = MOE_SCORE_IDENTITY;
    linear.bias = bias;
    linear.bias_count = EXPERTS - 2;
    CHECK_FAILS(moe_router_create_linear(prototypes, EXPERTS * D_IN, EXPERTS, D_IN, &linear, &r),
                MOE_ERROR_INVALID_ARGUMENT, "bias must have one value per expert");
    linear.bias = NULL;
    CHECK_FAILS(moe_router_create_linear(prototypes, EXPERTS * D_IN, EXPERTS, D_IN, &linear, &r),
                MOE_ERROR_INVALID_ARGUMENT, "bias is NULL");
    linear.bias_count = 0;
    prototypes[5] = INFINITY;
    CHECK_FAILS(moe_router_create_linear(prototypes, EXPERTS * D_IN, EXPERTS, D_IN, &linear, &r),
                MOE_ERROR_INVALID_ARGUMENT, "prototypes[5] is");
    CHECK(r == NULL, "a failed create left a handle");

    /* Assignments. */
    int32_t assigned[T * 2] = {0, 1, 2, 3, 4, -1};
    float assigned_weights[T * 2] = {1, 1, 1, 1, 1, 1};
    CHECK_OK(moe_forward_assigned(session, q0, assigned, assigned_weights, T * 2, 2, x, xs, base, y, ys));
    memcpy(untouched, y, sizeof y);
    assigned[3] = EXPERTS;
    CHECK_FAILS(moe_forward_assigned(session, q0, assigned, assigned_weights, T * 2, 2, x, xs, base, y, ys),
                MOE_ERROR_INVALID_ARGUMENT, "expert id at token 1, slot 1 must be in [0, 5)");
    assigned[3] = -2;
    CHECK_FAILS(moe_forward_assigned(session, q0, assigned, assigned_weights, T * 2, 2, x, xs, base, y, ys),
                MOE_ERROR_INVALID_ARGUMENT, "expert id at token 1, slot 1");
    assigned[3] = 3;
    assigned_weights[2] = INFINITY;
    CHECK_FAILS(moe_forward_assigned(session, q0, assigned, assigned_weights, T * 2, 2, x, xs, base, y, ys),
                MOE_ERROR_INVALID_ARGUMENT, "weight at token 1, slot 0 must be finite");
    assigned_weights[2] = 1;
    CHECK_FAILS(moe_forward_assigned(session, q0, assigned, assigned_weights, T * 2, 0, x, xs, base, y, ys),
                MOE_ERROR_INVALID_ARGUMENT, "top_k is 0");
    CHECK_FAILS(moe_forward_assigned(session, q0, assigned, assigned_weights, T * 2, 3, x, xs, base, y, ys),
                MOE_ERROR_INVALID_ARGUMENT, "slot_count is 6; 3 rows of x");
    CHECK_FAILS(moe_forward_assigned(session, q0, NULL, assigned_weights, T * 2, 2, x, xs, base, y, ys),
                MOE_ERROR_INVALID_ARGUMENT, "expert_ids is NULL");
    CHECK_FAILS(moe_forward_assigned(session, q0, assigned, assigned_weights, T * 2, 2, x, xs, base, y, ys - 1),
                MOE_ERROR_INVALID_ARGUMENT, "y_count is 35");
    CHECK(memcmp(y, untouched, sizeof y) == 0, "a failing assigned forward wrote into y");
    CHECK_OK(moe_router_free(uniform));
}

/* ---- A failed forward writes nothing ---- */

/* Bytes no forward writes (0xA5A5A5A5: a float of -2.9e-16, an id of -1515870811), put in every output
 * before a call that must fail. */
#define SENTINEL 0xA5

static int untouched_bytes(const void* data, size_t size)
{
    const unsigned char* bytes = data;
    for (size_t i = 0; i < size; i++) {
        if (bytes[i] != SENTINEL) {
            return 0;
        }
    }
    return 1;
}

/* The outputs of one forward and what they must hold after a failure: y (sentinel bytes, or the base it
 * is when y == base), expert ids and weights (sentinel bytes). */
typedef struct forward_buffers {
    float* x;
    float* bad_x; /* x with a NaN in token 1 */
    float* base;
    float* base_copy;
    float* y;
    int32_t* ids;
    float* weights;
    size_t xs, ys, slots;
} forward_buffers;

typedef enum output_mode { SEPARATE_BASE, BASE_IS_Y, BASE_NULL } output_mode;
static const char* const OUTPUT_MODES[] = {"y != base", "y == base", "base NULL"};

/* Refills the outputs and returns the base pointer to pass for `mode` (y itself holds base unless SEPARATE_BASE). */
static float* arm(forward_buffers* b, output_mode mode)
{
    memset(b->ids, SENTINEL, b->slots * sizeof(int32_t));
    memset(b->weights, SENTINEL, b->slots * sizeof(float));
    if (mode == SEPARATE_BASE) {
        memset(b->y, SENTINEL, b->ys * sizeof(float));
        return b->base;
    }
    memcpy(b->y, b->base, b->ys * sizeof(float));
    return mode == BASE_IS_Y ? b->y : NULL;
}

static void check_untouched(const forward_buffers* b, output_mode mode, int decision_given, const char* backend,
                            const char* what)
{
    int y_kept = mode == SEPARATE_BASE ? untouched_bytes(b->y, b->ys * sizeof(float))
                                       : memcmp(b->y, b->base, b->ys * sizeof(float)) == 0;
    CHECK(y_kept, "%s, %s, %s: the failed call wrote into y", backend, OUTPUT_MODES[mode], what);
    CHECK(memcmp(b->base, b->base_copy, b->ys * sizeof(float)) == 0, "%s, %s, %s: the failed call wrote into base",
          backend, OUTPUT_MODES[mode], what);
    if (decision_given) {
        CHECK(untouched_bytes(b->ids, b->slots * sizeof(int32_t)) &&
                  untouched_bytes(b->weights, b->slots * sizeof(float)),
              "%s, %s, %s: the failed call wrote into expert_ids or expert_weights", backend, OUTPUT_MODES[mode], what);
    }
}

/* Every way a forward on session `s` can fail after its arguments look right, and some ways they are wrong:
 * non-finite scores, a wrong size, a bad expert id, factors that can no longer be read (`broken`, a lazy
 * library whose file of expert 2 is gone). Each must leave y, base and the decision outputs as they were,
 * whatever base is; then the same session must still forward correctly. */
static void check_failures_write_nothing(moe_session* s, moe_module* broken, const char* backend)
{
    enum { T = 4, K = 2 };
    double prototypes[EXPERTS * D_IN];
    reference_prototypes(prototypes);
    moe_arrow_options options;
    CHECK_OK(moe_arrow_default_options(&options, sizeof options));
    options.top_k = K;
    moe_router* arrow = NULL;
    moe_router* uniform = NULL;
    CHECK_OK(moe_router_create_arrow(q0, &options, &arrow));
    CHECK_OK(moe_router_create_uniform(EXPERTS, &uniform));
    forward_buffers b = {random_floats(T * D_IN, 1.0), malloc(sizeof(float) * T * D_IN), random_floats(T * D_OUT, 1.0),
                         malloc(sizeof(float) * T * D_OUT), malloc(sizeof(float) * T * D_OUT),
                         malloc(sizeof(int32_t) * T * EXPERTS), malloc(sizeof(float) * T * EXPERTS),
                         T * D_IN, T * D_OUT, T * K};
    memcpy(b.bad_x, b.x, sizeof(float) * T * D_IN);
    b.bad_x[1 * D_IN + 3] = NAN;
    memcpy(b.base_copy, b.base, sizeof(float) * T * D_OUT);
    int32_t assigned[T * K] = {0, 1, 2, -1, 4, 4, 3, 0};
    float assigned_weights[T * K] = {0.5f, 0.25f, 1, 0, -0.5f, 0.75f, 2, 1};

    for (int mode = SEPARATE_BASE; mode <= BASE_NULL; mode++) {
        float* base = arm(&b, mode);
        CHECK_FAILS(moe_forward(s, q0, arrow, b.bad_x, b.xs, base, b.y, b.ys, b.ids, b.weights, b.slots),
                    MOE_ERROR_INVALID_ARGUMENT, "token 1: its router scores are not finite");
        check_untouched(&b, mode, 1, backend, "non-finite x");

        base = arm(&b, mode);
        CHECK_FAILS(moe_forward(s, q0, arrow, b.x, b.xs, base, b.y, b.ys, b.ids, b.weights, b.slots - 1),
                    MOE_ERROR_INVALID_ARGUMENT, "slot_count is 7");
        check_untouched(&b, mode, 1, backend, "a wrong slot_count");

        base = arm(&b, mode);
        CHECK_FAILS(moe_forward(s, q0, arrow, b.x, b.xs - 1, base, b.y, b.ys, b.ids, b.weights, b.slots),
                    MOE_ERROR_INVALID_ARGUMENT, "x_count is 63");
        check_untouched(&b, mode, 1, backend, "a wrong x_count");

        base = arm(&b, mode);
        CHECK_FAILS(moe_forward(s, q0, arrow, b.x, b.xs, base, b.y, b.ys - 1, b.ids, b.weights, b.slots),
                    MOE_ERROR_INVALID_ARGUMENT, "y_count is 47");
        check_untouched(&b, mode, 1, backend, "a wrong y_count");

        b.slots = T * EXPERTS; /* the uniform router keeps every expert */
        base = arm(&b, mode);
        CHECK_FAILS(moe_forward(s, broken, uniform, b.x, b.xs, base, b.y, b.ys, b.ids, b.weights, b.slots),
                    MOE_ERROR_NOT_FOUND, "adapter_model.safetensors");
        check_untouched(&b, mode, 1, backend, "an expert's file gone");
        b.slots = T * K;

        assigned[5] = EXPERTS;
        base = arm(&b, mode);
        CHECK_FAILS(moe_forward_assigned(s, q0, assigned, assigned_weights, T * K, K, b.x, b.xs, base, b.y, b.ys),
                    MOE_ERROR_INVALID_ARGUMENT, "expert id at token 2, slot 1 must be in [0, 5)");
        check_untouched(&b, mode, 0, backend, "an assigned expert id out of range");
        assigned[5] = 4;
        assigned_weights[6] = INFINITY;
        base = arm(&b, mode);
        CHECK_FAILS(moe_forward_assigned(s, q0, assigned, assigned_weights, T * K, K, b.x, b.xs, base, b.y, b.ys),
                    MOE_ERROR_INVALID_ARGUMENT, "weight at token 3, slot 0 must be finite");
        check_untouched(&b, mode, 0, backend, "an assigned weight not finite");
        assigned_weights[6] = 2;
        base = arm(&b, mode);
        CHECK_FAILS(moe_forward_assigned(s, broken, assigned, assigned_weights, T * K, K, b.x, b.xs, base, b.y, b.ys),
                    MOE_ERROR_NOT_FOUND, "adapter_model.safetensors");
        check_untouched(&b, mode, 0, backend, "an assigned expert's file gone");
    }

    /* The session is none the worse: a forward with a separate base matches the float64 reference. */
    double reference_weights[T * K], reference[T * D_OUT];
    char what[64];
    snprintf(what, sizeof what, "%s, Arrow after failures", backend);
    arm(&b, SEPARATE_BASE);
    CHECK_OK(moe_forward(s, q0, arrow, b.x, b.xs, b.base, b.y, b.ys, b.ids, b.weights, b.slots));
    linear_reference ref = {prototypes, MOE_NORMALIZATION_NONE, MOE_SCORE_ABSOLUTE, 1.0, NULL, what};
    check_linear(b.x, T, b.ids, b.weights, K, reference_weights, &ref);
    fixture_reference_forward(&fixture, Q0, b.x, T, b.base, b.ids, reference_weights, K, reference);
    check_close(b.y, reference, b.base, b.ys, K, what);

    free(b.x);
    free(b.bad_x);
    free(b.base);
    free(b.base_copy);
    free(b.y);
    free(b.ids);
    free(b.weights);
    CHECK_OK(moe_router_free(arrow));
    CHECK_OK(moe_router_free(uniform));
}

/* On the CPU and on the GPU kernels (the simulator; the NativeAOT build refuses it, as test_options checks). */
static void test_failed_forwards(void)
{
    char dirs[EXPERTS][PATH_MAX + 64];
    const char* paths[EXPERTS];
    for (int e = 0; e < EXPERTS; e++) {
        char relative[32];
        snprintf(relative, sizeof relative, "broken-%d", e);
        paths[e] = write_adapter(e, relative, NULL, dirs[e], sizeof dirs[e]);
    }
    moe_library_options options;
    CHECK_OK(moe_library_default_options(&options, sizeof options));
    options.lazy = 1;
    moe_library* lazy = NULL;
    moe_module* broken = NULL;
    CHECK_OK(moe_library_load_with_options(paths, EXPERTS, &options, &lazy));
    CHECK_OK(moe_library_find_module(lazy, "layers.0.self_attn.q_proj", &broken));
    char factors[PATH_MAX + 96];
    snprintf(factors, sizeof factors, "%s/adapter_model.safetensors", dirs[2]);
    CHECK(unlink(factors) == 0, "could not remove %s: %s", factors, strerror(errno));

    check_failures_write_nothing(session, broken, "CPU");

    moe_engine_options engine_options;
    CHECK_OK(moe_engine_default_options(&engine_options, sizeof engine_options));
    engine_options.backend = MOE_BACKEND_GPU_SIMULATOR;
    moe_engine* simulator = NULL;
#ifdef MOE_TEST_CPU_ONLY
    CHECK_FAILS(moe_engine_create(&engine_options, &simulator), MOE_ERROR_BACKEND_UNAVAILABLE, "GpuSimulator");
#else
    moe_session* simulated = NULL;
    CHECK_OK(moe_engine_create(&engine_options, &simulator));
    CHECK_OK(moe_session_create(simulator, &simulated));
    if (simulated) {
        check_failures_write_nothing(simulated, broken, "GPU simulator");
    }
    CHECK_OK(moe_session_free(simulated));
    CHECK_OK(moe_engine_free(simulator));
#endif
    CHECK_OK(moe_library_free(lazy));
    for (int e = 0; e < EXPERTS; e++) {
        fixture_remove_adapter(dirs[e]);
    }
}

static void test_bad_paths(void)
{
    moe_library* l = (moe_library*)&l;
    const char* missing = "/nonexistent/moerging/expert";
    CHECK_FAILS(moe_library_load(&missing, 1, &l), MOE_ERROR_NOT_FOUND, "no such directory");
    CHECK(l == NULL, "the out-parameter was not cleared");
    char file[PATH_MAX + 32];
    snprintf(file, sizeof file, "%s/adapter_config.json", fixture.paths[0]);
    const char* a_file = file;
    CHECK_FAILS(moe_library_load(&a_file, 1, &l), MOE_ERROR_NOT_FOUND, "is a file");
    const char* good_then_bad[] = {fixture.paths[0], missing};
    CHECK_FAILS(moe_library_load(good_then_bad, 2, &l), MOE_ERROR_NOT_FOUND, missing);
    CHECK_FAILS(moe_library_load(NULL, 2, &l), MOE_ERROR_INVALID_ARGUMENT, "directories is NULL");
    const char* with_null[] = {fixture.paths[0], NULL};
    CHECK_FAILS(moe_library_load(with_null, 2, &l), MOE_ERROR_INVALID_ARGUMENT, "directories[1] is NULL");
    CHECK_FAILS(moe_library_load(with_null, 0, &l), MOE_ERROR_INVALID_ARGUMENT, "at least one expert");

    /* Broken adapter directories, written next to the fixture's. */
    char directory[PATH_MAX + 32], path[PATH_MAX + 64];
    snprintf(directory, sizeof directory, "%s/broken", fixture.root);
    mkdir(directory, 0700);
    const char* broken = directory;
    CHECK_FAILS(moe_library_load(&broken, 1, &l), MOE_ERROR_NOT_FOUND, "no adapter_config.json");
    snprintf(path, sizeof path, "%s/adapter_config.json", directory);
    fixture_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q_proj\"]}");
    CHECK_FAILS(moe_library_load(&broken, 1, &l), MOE_ERROR_NOT_FOUND, "no adapter_model.safetensors");
    char weights_path[PATH_MAX + 64];
    snprintf(weights_path, sizeof weights_path, "%s/adapter_model.safetensors", directory);
    fixture_write_text(weights_path, "not a safetensors file at all");
    CHECK_FAILS(moe_library_load(&broken, 1, &l), MOE_ERROR_FORMAT, "adapter_model.safetensors");
    /* Shapes that disagree with the config's rank. */
    float a[3 * D_IN] = {0}, b[D_OUT * 3] = {0};
    const char* names[] = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
                           "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"};
    const float* data[] = {a, b};
    int ranks[] = {2, 2};
    int64_t shapes[2][2] = {{3, D_IN}, {D_OUT, 3}};
    fixture_write_safetensors(weights_path, 2, names, data, ranks, (const int64_t(*)[2])shapes);
    CHECK_FAILS(moe_library_load(&broken, 1, &l), MOE_ERROR_FORMAT, "do not have the rank 2");
    fixture_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": 4, \"use_dora\": true, "
                             "\"target_modules\": [\"q_proj\"]}");
    CHECK_FAILS(moe_library_load(&broken, 1, &l), MOE_ERROR_NOT_SUPPORTED, "DoRA");
    fixture_write_text(path, "{\"peft_type\": \"LORA\", \"r\": 3, \"lora_alpha\": ");
    CHECK_FAILS(moe_library_load(&broken, 1, &l), MOE_ERROR_FORMAT, "not valid JSON");
    unlink(path);
    unlink(weights_path);
    rmdir(directory);

    /* Module names. */
    moe_module* m = (moe_module*)&m;
    CHECK_FAILS(moe_library_find_module(library, "layers.9.mlp.up_proj", &m), MOE_ERROR_NOT_FOUND,
                "no module matches 'layers.9.mlp.up_proj'");
    CHECK(m == NULL, "the out-parameter was not cleared");
    CHECK_FAILS(moe_library_find_module(library, "q_proj", &m), MOE_ERROR_INVALID_ARGUMENT, "ambiguous");
    CHECK_FAILS(moe_library_find_module(library, NULL, &m), MOE_ERROR_INVALID_ARGUMENT, "name is NULL");
    CHECK_FAILS(moe_library_find_module(library, "", &m), MOE_ERROR_INVALID_ARGUMENT, "name");
}

static void test_bad_router_files(void)
{
    moe_router* r = (moe_router*)&r;
    const char* const* paths = (const char* const*)fixture.paths;
    float vectors[EXPERTS * D_IN];
    fixture_fill_normal(&rng, vectors, EXPERTS * D_IN, 1.0);
    CHECK_FAILS(moe_router_create_phatgoose(q0, paths, EXPERTS, NULL, &r), MOE_ERROR_NOT_FOUND,
                "has no PHATGOOSE gate file");
    CHECK(r == NULL, "the out-parameter was not cleared");
    write_expert_vectors("phatgoose_gates.safetensors", ".phatgoose_gate", vectors);
    CHECK_FAILS(moe_router_create_phatgoose(v0, paths, EXPERTS, NULL, &r), MOE_ERROR_FORMAT,
                "has no PHATGOOSE gate for module");
    CHECK_FAILS(moe_router_create_phatgoose(q0, paths, EXPERTS - 1, NULL, &r), MOE_ERROR_INVALID_ARGUMENT,
                "5 experts need 5 directories, got 4");
    const char* swapped[EXPERTS];
    for (int e = 0; e < EXPERTS; e++) {
        swapped[e] = fixture.paths[(e + 1) % EXPERTS];
    }
    CHECK_FAILS(moe_router_create_phatgoose(q0, swapped, EXPERTS, NULL, &r), MOE_ERROR_INVALID_ARGUMENT,
                "give the directories in expert order");
    CHECK_FAILS(moe_router_create_phatgoose(q0, NULL, EXPERTS, NULL, &r), MOE_ERROR_INVALID_ARGUMENT,
                "directories is NULL");
    CHECK_FAILS(moe_router_create_phatgoose(NULL, paths, EXPERTS, NULL, &r), MOE_ERROR_INVALID_ARGUMENT,
                "module is NULL");
    moe_routing_options options;
    CHECK_OK(moe_routing_default_options(&options, sizeof options));
    options.top_k = EXPERTS + 1;
    CHECK_FAILS(moe_router_create_phatgoose(q0, paths, EXPERTS, &options, &r), MOE_ERROR_INVALID_ARGUMENT,
                "top-k must be in [1, 5]");
    options.top_k = 0;
    options.temperature = 0;
    CHECK_FAILS(moe_router_create_phatgoose(q0, paths, EXPERTS, &options, &r), MOE_ERROR_INVALID_ARGUMENT,
                "temperature must be positive");
    options.struct_size = 2;
    CHECK_FAILS(moe_router_create_classifier("x", &options, &r), MOE_ERROR_INVALID_ARGUMENT,
                "moe_routing_options.struct_size is 2");
    remove_expert_files("phatgoose_gates.safetensors");

    memset(vectors + 2 * D_IN, 0, sizeof(float) * D_IN); /* expert 2's centroid has no direction */
    write_expert_vectors("centroids.safetensors", ".centroid", vectors);
    CHECK_FAILS(moe_router_create_centroid(q0, paths, EXPERTS, NULL, &r), MOE_ERROR_INVALID_ARGUMENT,
                "is zero, so it has no direction");
    remove_expert_files("centroids.safetensors");

    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/no-such-classifier.safetensors", fixture.root);
    CHECK_FAILS(moe_router_create_classifier(path, NULL, &r), MOE_ERROR_NOT_FOUND, "no-such-classifier");
    CHECK_FAILS(moe_router_create_classifier(NULL, NULL, &r), MOE_ERROR_INVALID_ARGUMENT, "path is NULL");
    snprintf(path, sizeof path, "%s/classifier.safetensors", fixture.root);
    fixture_write_text(path, "not a safetensors file at all");
    CHECK_FAILS(moe_router_create_classifier(path, NULL, &r), MOE_ERROR_FORMAT, "classifier.safetensors");
    /* A classifier over 4 experts loads, but does not fit a module of 5. */
    float bias[EXPERTS - 1] = {0};
    write_classifier(path, vectors, bias, EXPERTS - 1);
    CHECK_OK(moe_router_create_classifier(path, NULL, &r));
    float x[D_IN] = {0}, y[D_OUT] = {0};
    CHECK_FAILS(moe_forward(session, q0, r, x, D_IN, NULL, y, D_OUT, NULL, NULL, 0), MOE_ERROR_INVALID_ARGUMENT,
                "chooses among 4 experts");
    CHECK_OK(moe_router_free(r));
    unlink(path);
}

/* Freeing in order: sessions, then their engine; the library any time. */
static void test_teardown(void)
{
    CHECK_OK(moe_session_free(session));
    CHECK_OK(moe_library_free(library));
    CHECK_OK(moe_engine_free(engine));
}

/* ---- Main ---- */

typedef struct test_case {
    const char* name;
    void (*run)(void);
} test_case;

static const test_case CASES[] = {
    {"abi_and_errors", test_abi_and_errors},
    {"runtime_missing", test_runtime_missing},
    {"options", test_options},
    {"cpu_threads_bound", test_cpu_threads_bound},
    {"library_queries", test_library_queries},
    {"uniform_forward", test_uniform},
    {"fixed_forward", test_fixed},
    {"library_names", test_library_names},
    {"library_base_models", test_library_base_models},
    {"library_lazy", test_library_lazy},
    {"arrow_forward", test_arrow},
    {"arrow_library_defaults", test_arrow_library_defaults},
    {"linear_forward", test_linear},
    {"assigned_forward", test_assigned},
    {"readme_example", test_readme_example},

    {"weight_precision", test_weight_precision},
    {"phatgoose_forward", test_phatgoose},
    {"centroid_forward", test_centroid},
    {"classifier_forward", test_classifier},
    {"threads", test_threads},
    {"errors_are_per_thread", test_errors_are_per_thread},
    {"bad_handles", test_bad_handles},
    {"bad_sizes", test_bad_sizes},
    {"failed_forwards", test_failed_forwards},
    {"bad_paths", test_bad_paths},
    {"bad_router_files", test_bad_router_files},
    {"teardown", test_teardown},
};
enum { CASE_COUNT = sizeof CASES / sizeof CASES[0] };

static void xml_escaped(FILE* file, const char* text)
{
    for (; *text; text++) {
        switch (*text) {
        case '&': fputs("&amp;", file); break;
        case '<': fputs("&lt;", file); break;
        case '>': fputs("&gt;", file); break;
        case '"': fputs("&quot;", file); break;
        default: fputc(*text, file);
        }
    }
}

static int setup(void)
{
    if (fixture_create(&fixture, EXPERTS, MODULES, 3, &rng) != 0) {
        fprintf(stderr, "could not write the test experts: %s\n", strerror(errno));
        return 0;
    }
    moe_engine_options options;
    moe_engine_default_options(&options, sizeof options);
    options.backend = MOE_BACKEND_CPU;
    options.cpu_threads = 2;
    if (moe_engine_create(&options, &engine) != MOE_OK ||
        moe_library_load((const char* const*)fixture.paths, EXPERTS, &library) != MOE_OK ||
        moe_session_create(engine, &session) != MOE_OK ||
        moe_library_find_module(library, "layers.0.self_attn.q_proj", &q0) != MOE_OK ||
        moe_library_find_module(library, "model.layers.0.self_attn.v_proj", &v0) != MOE_OK) {
        fprintf(stderr, "setup failed: %s\n", moe_last_error());
        return 0;
    }
    return 1;
}

int main(int argc, char** argv)
{
    const char* junit = NULL;
    program = argv[0];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--expect-runtime-missing") == 0) {
            return expect_runtime_missing();
        }
        if (strcmp(argv[i], "--junit") == 0 && i + 1 < argc) {
            junit = argv[++i];
        } else {
            fprintf(stderr, "usage: moerging_test [--junit FILE]\n");
            return 2;
        }
    }
    const char* seed_text = getenv("MOERGING_TEST_SEED");
    uint64_t seed = seed_text ? strtoull(seed_text, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    rng.state = seed;
    printf("seed %llu (set MOERGING_TEST_SEED to repeat)\n", (unsigned long long)seed);

    int ready = setup();
    int failed_cases = 0;
    char* details[CASE_COUNT];
    double seconds[CASE_COUNT];
    for (int c = 0; c < CASE_COUNT; c++) {
        failure_text[0] = '\0';
        failure_count = 0;
        struct timespec begin, end;
        clock_gettime(CLOCK_MONOTONIC, &begin);
        if (ready) {
            CASES[c].run();
        } else {
            fail(__FILE__, __LINE__, "setup failed (see above)");
        }
        clock_gettime(CLOCK_MONOTONIC, &end);
        seconds[c] = (double)(end.tv_sec - begin.tv_sec) + (double)(end.tv_nsec - begin.tv_nsec) * 1e-9;
        details[c] = failure_count ? strdup(failure_text) : NULL;
        failed_cases += failure_count != 0;
        printf("%s %s (%.3f s)\n", failure_count ? "FAIL" : "ok  ", CASES[c].name, seconds[c]);
    }
    fixture_destroy(&fixture);
    printf("%d passed, %d failed (seed %llu)\n", CASE_COUNT - failed_cases, failed_cases, (unsigned long long)seed);

    if (junit) {
        FILE* file = fopen(junit, "w");
        if (!file) {
            fprintf(stderr, "cannot write %s: %s\n", junit, strerror(errno));
            return 1;
        }
        fprintf(file, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        fprintf(file, "<testsuite name=\"c_api\" tests=\"%d\" failures=\"%d\" errors=\"0\" skipped=\"0\">\n",
                CASE_COUNT, failed_cases);
        for (int c = 0; c < CASE_COUNT; c++) {
            fprintf(file, "  <testcase classname=\"c_api\" name=\"%s\" time=\"%.3f\"", CASES[c].name, seconds[c]);
            if (details[c]) {
                fputs("><failure message=\"", file);
                xml_escaped(file, details[c]);
                fputs("\"/></testcase>\n", file);
            } else {
                fputs("/>\n", file);
            }
            free(details[c]);
        }
        fputs("</testsuite>\n", file);
        fclose(file);
    }
    return failed_cases == 0 ? 0 : 1;
}
