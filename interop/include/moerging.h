/*
 * moerging.h: the C API of the MoErging engine, the only header a host needs.
 *
 * The engine loads a library of LoRA experts (PEFT adapter directories), routes each token among them and
 * adds their weighted outputs to the base model's output (output aggregation):
 *
 *     y[t] = base[t] + sum over the token's slots of  w * s_e * B_e (A_e x[t])
 *
 * libmoerging.so comes in two builds of one ABI. The hosted build runs the engine on the .NET 10 runtime and
 * has every backend (CPU, CUDA, OpenCL, the GPU simulator); the NativeAOT build carries the engine compiled
 * ahead of time, needs no runtime, runs on the CPU only (a GPU backend returns MOE_ERROR_BACKEND_UNAVAILABLE
 * saying so) and needs an x86-64-v3 processor (AVX2, FMA, BMI1/2, ...). Either loads its managed side on the
 * first call that needs it (not on moe_version, moe_abi_version, moe_status_name, moe_last_error, the
 * moe_*_default_options functions, or a free function given NULL): MoErging.Interop.dll with
 * MoErging.Interop.runtimeconfig.json (hosted) or MoErging.Interop.so (NativeAOT), in the directory named by
 * the environment variable MOERGING_MANAGED_DIR, or else next to libmoerging.so itself (symbolic links
 * resolved) or in its moerging/ subdirectory. The hosted build looks for the .NET runtime through DOTNET_ROOT,
 * or else the system's install location (/usr/share/dotnet, /usr/lib/dotnet, ...). If the managed side cannot
 * load, that first call and every later one return MOE_ERROR_BACKEND_UNAVAILABLE with the reason in
 * moe_last_error(); on a processor older than x86-64-v3 the NativeAOT build returns MOE_ERROR_NOT_SUPPORTED
 * instead, pointing to the hosted build. The process is never aborted.
 *
 * The library's SONAME is libmoerging.so.<MOE_ABI_VERSION> (libmoerging.so.2): a host linked against one ABI
 * never loads another.
 *
 * Conventions
 *  - Every function that can fail returns a moe_status; on failure moe_last_error() says what was wrong
 *    and out-parameters that return handles are set to NULL (when not NULL themselves). No call aborts or
 *    unwinds through the caller, whatever it is given; a call that fails writes nothing else.
 *  - Handles (moe_engine, moe_session, moe_library, moe_module, moe_router) are opaque. They are not
 *    addresses: the library checks every handle it is given and rejects NULL, a freed handle and a handle
 *    of another kind with MOE_ERROR_INVALID_ARGUMENT. Reuse of a freed handle is detected until its slot
 *    is reused some 4 billion times; do not rely on it beyond catching mistakes.
 *  - Free functions accept NULL (and then do nothing and return MOE_OK). Freeing a handle twice returns
 *    MOE_ERROR_INVALID_ARGUMENT and changes nothing.
 *  - Arrays are row-major and float32 unless stated: x is [T, d_in], y and base are [T, d_out], expert ids
 *    (int32) and weights are [T, k]. Every array comes with its element count, which must match exactly.
 *  - Strings are UTF-8 and NUL-terminated. Functions that return a string copy it into a caller buffer the
 *    way snprintf does: at most capacity - 1 bytes and a NUL (nothing when capacity is 0; buffer may then
 *    be NULL), and *length receives the full length in bytes, without the NUL.
 *  - Option structs start with struct_size. Fill one with its moe_*_default_options function, passing
 *    sizeof the struct as your header declares it; then change fields. Passing NULL instead of a struct
 *    means the defaults. A struct from a newer header is accepted as long as the fields this library does
 *    not know are zero; otherwise the call returns MOE_ERROR_NOT_SUPPORTED.
 *
 * Ownership
 *  - The caller owns every array and string it passes; the library reads or writes them only during the
 *    call and keeps no pointer to them. Routers and libraries copy what they need.
 *  - Handles returned through out-parameters belong to the caller, who frees them with the matching
 *    free function, except moe_module handles: those belong to their library and stay valid until
 *    moe_library_free; never free them.
 *  - A router keeps what it needs from the module it was built for; it stays usable after its library is
 *    freed, but forwards need a module handle, and those die with the library.
 *  - moe_engine_free fails (MOE_ERROR_INVALID_ARGUMENT) while sessions of the engine are alive: free the
 *    sessions first.
 *  - The string moe_last_error() returns belongs to the library and the calling thread; it stays valid
 *    until the next failing call on that thread.
 *
 * Threads
 *  - Engines, libraries, modules and routers are immutable once created and may be shared by any number
 *    of threads: create, query and forward calls on them may run concurrently.
 *  - A session is one thread's workspace: use it from one thread at a time (it may move between threads).
 *    A call on a session that another thread is using fails with MOE_ERROR_INVALID_ARGUMENT, and so does
 *    moe_session_free. The usual pattern is one engine and one library per process, one session per thread.
 *  - Free other handles only when no other thread is using them.
 *  - The error message is per thread: a failure on one thread never changes another thread's message.
 *
 * Results repeat exactly: the same inputs give bit-identical outputs whatever the threads or sessions.
 */
#ifndef MOERGING_H
#define MOERGING_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#  ifdef MOERGING_BUILD
#    define MOE_API __declspec(dllexport)
#  else
#    define MOE_API __declspec(dllimport)
#  endif
#else
#  define MOE_API __attribute__((visibility("default")))
#endif

/* The ABI this header describes. It changes only when a change breaks existing callers; functions and
 * option fields are added without changing it. */
#define MOE_ABI_VERSION 2

typedef enum moe_status {
    MOE_OK = 0,
    MOE_ERROR_INVALID_ARGUMENT = 1,   /* NULL, stale or wrong-kind handle, wrong size, out-of-range value */
    MOE_ERROR_NOT_FOUND = 2,          /* no such module, directory or file */
    MOE_ERROR_FORMAT = 3,             /* a malformed adapter_config.json or safetensors file */
    MOE_ERROR_NOT_SUPPORTED = 4,      /* a LoRA variant the engine lacks (DoRA, ...), unknown option fields,
                                       * a processor the NativeAOT build does not run on */
    MOE_ERROR_BACKEND_UNAVAILABLE = 5,/* the backend asked for is absent, or the managed side cannot load */
    MOE_ERROR_OUT_OF_MEMORY = 6,
    MOE_ERROR_INTERNAL = 7            /* anything else; the message names the cause */
} moe_status;

/* Where an engine runs. AUTO picks the best backend present: CUDA, then OpenCL, then the CPU (the NativeAOT
 * build: the CPU, at once). GPU_SIMULATOR runs the GPU kernels on ILGPU's CPU accelerator: slow, for debugging
 * without a GPU (hosted build only). */
typedef enum moe_backend {
    MOE_BACKEND_AUTO = 0,
    MOE_BACKEND_CPU = 1,
    MOE_BACKEND_CUDA = 2,
    MOE_BACKEND_OPENCL = 3,
    MOE_BACKEND_GPU_SIMULATOR = 4
} moe_backend;

/* How an engine stores expert factors for its forwards (and, on the CPU, linear routers' prototypes), and how a
 * library holds them in memory. The 16-bit formats halve the bytes a CPU forward reads: each value is rounded to
 * nearest, ties to even, once, and widened to float32 in registers, where all arithmetic stays. Load a library at the
 * precision of the engines that use it: an engine converts factors of another precision into a copy of its own (a GPU
 * per module as it uploads it, the CPU per expert the first time a forward runs it; kept until the engine is freed).
 * The CPU copies every expert it runs, whatever the precisions, into the panels its kernels stream. A factor stored
 * in the file in that very format keeps its bits. A GPU backend stores what it uploads at the same
 * precision. */
typedef enum moe_weight_precision {
    MOE_WEIGHT_PRECISION_F32 = 0,      /* float32 (default) */
    MOE_WEIGHT_PRECISION_F16 = 1,      /* IEEE binary16 (range +-65504; larger values become infinity) */
    MOE_WEIGHT_PRECISION_BF16 = 2      /* bfloat16: the upper half of a float32 */
} moe_weight_precision;

/* How a linear router normalises x before scoring. */
typedef enum moe_normalization {
    MOE_NORMALIZATION_NONE = 0,        /* x as it is (Arrow) */
    MOE_NORMALIZATION_LAYER_NORM = 1,  /* LayerNorm without affine parameters, eps 1e-5 (PHATGOOSE) */
    MOE_NORMALIZATION_L2 = 2           /* x / max(||x||, 1e-12) */
} moe_normalization;

/* The function a linear router applies to each dot product. */
typedef enum moe_score_function {
    MOE_SCORE_IDENTITY = 0,
    MOE_SCORE_ABSOLUTE = 1             /* |x . p_e| (Arrow: a prototype's sign is arbitrary) */
} moe_score_function;

typedef struct moe_engine moe_engine;
typedef struct moe_session moe_session;
typedef struct moe_library moe_library;
typedef struct moe_module moe_module;
typedef struct moe_router moe_router;

typedef struct moe_engine_options {
    uint32_t struct_size;
    int32_t backend;        /* a moe_backend; default MOE_BACKEND_AUTO */
    int32_t cpu_threads;    /* CPU threads a forward uses, the caller's included; 0 (default): all processors;
                             * at most 4 x the processor count (.NET's Environment.ProcessorCount): more, or a
                             * negative count, is MOE_ERROR_INVALID_ARGUMENT */
    int32_t weight_precision; /* a moe_weight_precision; default MOE_WEIGHT_PRECISION_F32. Added after the first
                             * version: a caller whose struct ends at cpu_threads gets the default */
} moe_engine_options;

typedef struct moe_library_options {
    uint32_t struct_size;
    const char* const* names; /* NULL (default): every expert named after its directory; else `count` entries
                               * (count as given to the load), each the expert's UTF-8 name or NULL to name it
                               * after its directory */
    int32_t strict;         /* nonzero: experts whose adapter_config.json name different base models (hub ids in
                             * base_model_name_or_path; local paths are not compared) are refused with
                             * MOE_ERROR_INVALID_ARGUMENT instead of a warning; default 0 */
    int32_t lazy;           /* nonzero: validate everything now but read each module's factors on first use, so
                             * memory goes only to the experts that forwards and routers touch (that first use
                             * fails, naming the file, if the file changed or vanished since); default 0 */
    int32_t quiet;          /* nonzero: write no warnings to stderr; default 0 */
    int32_t weight_precision; /* a moe_weight_precision: how the library holds the factors in memory; default
                             * MOE_WEIGHT_PRECISION_F32. Added after the first version, in what was its trailing
                             * padding (sizeof is unchanged): a struct filled by moe_library_default_options has it
                             * zero, the default */
} moe_library_options;

/* Arrow's top-k and temperature. Zero fields take the library's defaults: its experts' PEFT arrow_config
 * values when every expert's config gives the same one, else PEFT's own. */
typedef struct moe_arrow_options {
    uint32_t struct_size;
    int32_t top_k;          /* experts kept per token, in [1, E]; 0 (default): the experts' arrow_config top_k
                             * when they agree, else 3 (PEFT's), either lowered to E if larger */
    float temperature;      /* softmax temperature, positive; 0 (default): the experts' arrow_config
                             * router_temperature when they agree, else 1 */
} moe_arrow_options;

typedef struct moe_linear_router_options {
    uint32_t struct_size;
    int32_t top_k;          /* experts kept per token, in [1, E]; default 1 */
    float temperature;      /* positive; default 1 */
    int32_t normalization;  /* a moe_normalization; default MOE_NORMALIZATION_NONE */
    int32_t score_function; /* a moe_score_function; default MOE_SCORE_IDENTITY */
    const float* bias;      /* [E] added to the scores after the temperature, or NULL (default) */
    size_t bias_count;      /* elements in bias: E, or 0 when bias is NULL */
} moe_linear_router_options;

/* Top-k and temperature of the routers built from files (PHATGOOSE, centroid, classifier). */
typedef struct moe_routing_options {
    uint32_t struct_size;
    int32_t top_k;          /* experts kept per token, in [1, E]; 0 (default): the router's own default */
    float temperature;      /* positive; default 1 */
} moe_routing_options;

/* ---- Version, status and errors: no runtime needed ---- */

/* MOE_ABI_VERSION as the library was built; compare it with the header's at start-up. */
MOE_API uint32_t moe_abi_version(void);

/* The library's version, the engine's package version ("1.0.0"): a static string, never NULL. Versions of one
 * ABI differ in what they add and fix, not in what callers rely on. */
MOE_API const char* moe_version(void);

/* The status's name ("MOE_ERROR_NOT_FOUND"); a static string, never NULL. */
MOE_API const char* moe_status_name(moe_status status);

/* The message of the last call on this thread that did not return MOE_OK ("" if none did). Never NULL;
 * successful calls leave it unchanged. */
MOE_API const char* moe_last_error(void);

/* Fill *options with the defaults; size is sizeof(*options) as the caller's header declares it. Returns
 * MOE_ERROR_INVALID_ARGUMENT if options is NULL, or size is smaller than the struct's first version or larger
 * than 1024 bytes (a struct_size outside those bounds is likewise rejected by the calls that take options). */
MOE_API moe_status moe_engine_default_options(moe_engine_options* options, size_t size);
MOE_API moe_status moe_library_default_options(moe_library_options* options, size_t size);
MOE_API moe_status moe_arrow_default_options(moe_arrow_options* options, size_t size);
MOE_API moe_status moe_linear_router_default_options(moe_linear_router_options* options, size_t size);
MOE_API moe_status moe_routing_default_options(moe_routing_options* options, size_t size);

/* ---- Engine and sessions ---- */

/* Creates an engine on the backend asked for (options may be NULL: MOE_BACKEND_AUTO, every processor).
 * A backend this build lacks or that cannot start returns MOE_ERROR_BACKEND_UNAVAILABLE. */
MOE_API moe_status moe_engine_create(const moe_engine_options* options, moe_engine** engine);

/* The backend the engine runs on (never MOE_BACKEND_AUTO) and why it was chosen (reason may be NULL with
 * capacity 0; backend and length may be NULL). */
MOE_API moe_status moe_engine_info(const moe_engine* engine, int32_t* backend, char* reason, size_t capacity,
                                   size_t* length);

/* Fails while sessions of the engine are alive. */
MOE_API moe_status moe_engine_free(moe_engine* engine);

/* A per-thread workspace for forwards. Its buffers grow to the largest batch seen and are kept, so warm
 * forwards allocate nothing. */
MOE_API moe_status moe_session_create(moe_engine* engine, moe_session** session);
MOE_API moe_status moe_session_free(moe_session* session);

/* ---- Expert libraries and modules ---- */

/* Loads count PEFT LoRA adapter directories (UTF-8 paths) as experts 0 .. count-1, in that order. All or
 * nothing: MOE_ERROR_NOT_FOUND for a missing directory or file, MOE_ERROR_FORMAT for a malformed one,
 * MOE_ERROR_NOT_SUPPORTED for a LoRA variant the engine lacks; the message names the file.
 * An expert without a name in options->names is named after its directory; directories of the same name
 * (run1/adapter, run2/adapter) are told apart by the shortest path suffix that does. Two experts of the same
 * name, or the same directory twice without names, are MOE_ERROR_INVALID_ARGUMENT naming both directories.
 * What the caller should hear once about a library that loads is written to stderr, one line each starting
 * "moerging: warning: ": experts trained on different base models (unless options->strict refuses them),
 * modules saved whole (modules_to_save, such as a classification head) that LoRA forwards do not apply, and
 * experts whose arrow_config values disagree. options->quiet silences them. options may be NULL (defaults). */
MOE_API moe_status moe_library_load_with_options(const char* const* directories, size_t count,
                                                 const moe_library_options* options, moe_library** library);

/* moe_library_load_with_options with options NULL: the defaults. */
MOE_API moe_status moe_library_load(const char* const* directories, size_t count, moe_library** library);

/* Number of experts (E) and of adapted modules; either pointer may be NULL. */
MOE_API moe_status moe_library_info(const moe_library* library, size_t* expert_count, size_t* module_count);

/* The name of expert `expert`: the one given at load, else its directory's name (see moe_library_load_with_options). */
MOE_API moe_status moe_library_expert_name(const moe_library* library, size_t expert, char* buffer,
                                           size_t capacity, size_t* length);

/* Module number `index` (modules are in ordinal name order). The handle belongs to the library. */
MOE_API moe_status moe_library_module(const moe_library* library, size_t index, moe_module** module);

/* The module whose full PEFT name is `name`, or ends with "." + name ("q_proj", "layers.0.self_attn.q_proj").
 * MOE_ERROR_NOT_FOUND if none matches; MOE_ERROR_INVALID_ARGUMENT if several do (the message lists them).
 * The handle belongs to the library. */
MOE_API moe_status moe_library_find_module(const moe_library* library, const char* name, moe_module** module);

MOE_API moe_status moe_library_free(moe_library* library);

/* d_in, d_out, E and the largest expert rank at the module; any pointer may be NULL. */
MOE_API moe_status moe_module_info(const moe_module* module, size_t* input_dim, size_t* output_dim,
                                   size_t* expert_count, size_t* max_rank);

/* The module's full name, for example "base_model.model.model.layers.0.self_attn.q_proj". */
MOE_API moe_status moe_module_name(const moe_module* module, char* buffer, size_t capacity, size_t* length);

/* ---- Routers ----
 * A router decides, for each token, k slots of (expert id, weight), in descending weight with ties to the
 * lower expert id; empty slots (id -1, weight 0) come last. */

/* Dense: every token uses every expert with weight 1/E (k = E). */
MOE_API moe_status moe_router_create_uniform(size_t expert_count, moe_router** router);

/* Dense task-level weights, one finite weight per expert (negative allowed; k = E). */
MOE_API moe_status moe_router_create_fixed(const float* weights, size_t count, moe_router** router);

/* Arrow (zero-shot): prototypes are the unit top right singular vectors of each expert's B A at the module;
 * score_e = |x . p_e| / temperature; keep top_k; softmax over the kept scores. Every expert must adapt the
 * module. options may be NULL (the library's defaults; see moe_arrow_options). */
MOE_API moe_status moe_router_create_arrow(const moe_module* module, const moe_arrow_options* options,
                                           moe_router** router);

/* Any score-based router: score_e = f(norm(x) . p_e) / temperature + bias_e, keep top_k, softmax over the
 * kept scores. prototypes is [expert_count, input_dim], prototype_count = expert_count * input_dim.
 * PHATGOOSE, centroid and classifier routers are this with their own prototypes (the functions below build
 * them from their files). options may be NULL. */
MOE_API moe_status moe_router_create_linear(const float* prototypes, size_t prototype_count, size_t expert_count,
                                            size_t input_dim, const moe_linear_router_options* options,
                                            moe_router** router);

/* PHATGOOSE: each expert's trained gate g_e for the module, read from phatgoose_gates.safetensors in its
 * directory (tensor "<full module name>.phatgoose_gate", [d_in]); score_e = LayerNorm(x) . LayerNorm(g_e) /
 * sqrt(d_in) / temperature; keep top_k (default 2, or E if smaller); softmax over the kept scores.
 * directories are the library's, count = E of them in expert order (each directory's name is its expert's).
 * MOE_ERROR_NOT_FOUND for a missing gate file, MOE_ERROR_FORMAT for a missing or malformed gate. options may
 * be NULL. */
MOE_API moe_status moe_router_create_phatgoose(const moe_module* module, const char* const* directories, size_t count,
                                               const moe_routing_options* options, moe_router** router);

/* Centroids: each expert's mean hidden state c_e at the module, read from centroids.safetensors in its directory
 * (tensor "<full module name>.centroid", [d_in]; `moerge centroids` writes them); score_e = x . c_e /
 * (|c_e| sqrt(d_in)) / temperature; keep top_k (default: all, k = E); softmax. directories and errors as for
 * moe_router_create_phatgoose. */
MOE_API moe_status moe_router_create_centroid(const moe_module* module, const char* const* directories, size_t count,
                                              const moe_routing_options* options, moe_router** router);

/* A learned classifier saved by `moerge train-router` (a safetensors file of weight [E, d_in] and bias [E]):
 * score_e = (W x)_e / temperature + b_e; keep top_k (default: all, k = E); softmax. Not tied to a module: it
 * routes any module with the same E and d_in. MOE_ERROR_NOT_FOUND for a missing file, MOE_ERROR_FORMAT for a
 * malformed one. */
MOE_API moe_status moe_router_create_classifier(const char* path, const moe_routing_options* options,
                                                moe_router** router);

/* E and k (slots per token in this router's decisions); either pointer may be NULL. */
MOE_API moe_status moe_router_info(const moe_router* router, size_t* expert_count, size_t* top_k);

MOE_API moe_status moe_router_free(moe_router* router);

/* ---- Forward ---- */

/* Routes the T = x_count / d_in rows of x at `module` with `router` and adds the routed mixture into y.
 *  - x: [T, d_in], x_count elements (a whole number of rows).
 *  - base: [T, d_out] or NULL. Given, y = base + mixture (base may be y itself); NULL, y holds the base
 *    output on entry and the mixture is added in place.
 *  - y: [T, d_out], y_count = T * d_out elements; must not overlap x (nor base, unless base == y).
 *  - expert_ids, expert_weights: [T, k] each (k from moe_router_info), slot_count = T * k elements, to
 *    receive the routing decision; both NULL with slot_count 0 when it is not wanted (either may be NULL).
 * The router must fit the module (same E; for a linear router, the same d_in; an Arrow router, its own
 * module). Routing and the forward run as one step (on a GPU: one upload and one synchronisation). A call that
 * fails (a bad argument, a row of x whose scores are not finite, an expert whose factors cannot be read, a
 * backend error) leaves y, expert_ids and expert_weights as they were, whatever base is. */
MOE_API moe_status moe_forward(moe_session* session, const moe_module* module, const moe_router* router,
                               const float* x, size_t x_count, const float* base, float* y, size_t y_count,
                               int32_t* expert_ids, float* expert_weights, size_t slot_count);

/* Batched multi-tenant LoRA: no router runs; the host gives each token top_k slots of (expert id, weight).
 *  - expert_ids: [T, top_k] int32, each in [0, E) or -1 for an empty slot; expert_weights: [T, top_k]
 *    finite (ignored for empty slots); slot_count = T * top_k elements in each. Repeated ids add up.
 *  - x, base, y as in moe_forward; a call that fails leaves y as it was. */
MOE_API moe_status moe_forward_assigned(moe_session* session, const moe_module* module, const int32_t* expert_ids,
                                        const float* expert_weights, size_t slot_count, int32_t top_k,
                                        const float* x, size_t x_count, const float* base, float* y,
                                        size_t y_count);

#ifdef __cplusplus
}
#endif

#endif /* MOERGING_H */
