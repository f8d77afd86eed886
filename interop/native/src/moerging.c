/*
 * libmoerging.so: forwards each call of moerging.h to an [UnmanagedCallersOnly] entry point of the managed
 * side, MoErging.Interop, which it loads on first use. The hosted build (the default) starts the .NET runtime
 * through nethost and hostfxr and takes the entry points from MoErging.Interop.dll; the NativeAOT build
 * (MOE_MANAGED_AOT, CMake's -DMOE_MANAGED=aot) checks the processor, then dlopen()s MoErging.Interop.so, the
 * same code compiled ahead of time, and dlsym()s them: no runtime, CPU only. What needs no managed code
 * (versions, status names, the error message, default options, freeing NULL) is answered here; option
 * structs are checked here and handed over in their current full size.
 */
#define _GNU_SOURCE
#include "moerging.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef MOE_MANAGED_AOT
#define MANAGED_FILE "MoErging.Interop.so"
#define LOAD_FAILED "MoErging.Interop.so could not load"
#define PUBLISH_TARGET "NativeAot"
/* Exports.EntryPointPrefix: the NativeAOT library exports each entry point as this and its method name. */
#define MANAGED_SYMBOL_PREFIX "moerging_managed_"
/* IlcInstructionSet in MoErging.Interop.csproj: the code of MoErging.Interop.so assumes these instructions. */
#define INSTRUCTION_SET "x86-64-v3"
#define INSTRUCTION_SET_FEATURES "AVX, AVX2, BMI1, BMI2, F16C, FMA, LZCNT, MOVBE"
#else
#include <coreclr_delegates.h>
#include <hostfxr.h>
#include <nethost.h>

#define MANAGED_TYPE "MoErging.Interop.Exports, MoErging.Interop"
#define MANAGED_FILE "MoErging.Interop.dll"
#define MANAGED_CONFIG "MoErging.Interop.runtimeconfig.json"
#define LOAD_FAILED "the .NET runtime could not start"
#define PUBLISH_TARGET "Native"
#endif
#define MANAGED_DIR_VARIABLE "MOERGING_MANAGED_DIR"
/* Where an install puts a managed side that is more than one file, below the library's own directory. */
#define MANAGED_SUBDIRECTORY "moerging"

/* Messages longer than this are cut (at a character boundary). */
#define ERROR_CAPACITY 4096

/* A struct_size above this is taken for garbage rather than a newer struct, so we never scan far. */
#define MAX_OPTIONS_SIZE 1024

/* ---- The calling thread's error message ---- */

static _Thread_local char tls_error[ERROR_CAPACITY];

static void store_error(const char* message, size_t length)
{
    if (length >= ERROR_CAPACITY) {
        length = ERROR_CAPACITY - 1;
        while (length > 0 && ((unsigned char)message[length] & 0xC0) == 0x80) {
            length--; /* do not split a UTF-8 sequence */
        }
    }
    memcpy(tls_error, message, length);
    tls_error[length] = '\0';
}

__attribute__((format(printf, 1, 2))) static void set_error(const char* format, ...)
{
    char message[ERROR_CAPACITY];
    va_list args;
    va_start(args, format);
    int n = vsnprintf(message, sizeof message, format, args);
    va_end(args);
    store_error(message, n < 0 ? 0 : strnlen(message, sizeof message));
}

/* Managed code reports its errors through this callback, so both sides share one slot per thread. */
static void receive_error(const uint8_t* message, size_t length)
{
    store_error((const char*)message, length);
}

/* Managed code writes a loaded library's warnings through this: stdio follows the host's redirection of stderr. */
static void write_warning(const uint8_t* message, size_t length)
{
    fprintf(stderr, "moerging: warning: %.*s\n", length > INT_MAX ? INT_MAX : (int)length, (const char*)message);
}

/* ---- The managed entry points ---- */

#define MANAGED_EXPORTS(X)                                                                                    \
    X(Initialize, (void (*)(const uint8_t*, size_t), void (*)(const uint8_t*, size_t), int32_t))            \
    X(EngineCreate, (const moe_engine_options*, moe_engine**))                                              \
    X(EngineInfo, (const moe_engine*, int32_t*, char*, size_t, size_t*))                                    \
    X(EngineFree, (moe_engine*))                                                                            \
    X(SessionCreate, (moe_engine*, moe_session**))                                                          \
    X(SessionFree, (moe_session*))                                                                          \
    X(LibraryLoad, (const char* const*, size_t, const moe_library_options*, moe_library**))                 \
    X(LibraryInfo, (const moe_library*, size_t*, size_t*))                                                  \
    X(LibraryExpertName, (const moe_library*, size_t, char*, size_t, size_t*))                              \
    X(LibraryModule, (const moe_library*, size_t, moe_module**))                                            \
    X(LibraryFindModule, (const moe_library*, const char*, moe_module**))                                   \
    X(LibraryFree, (moe_library*))                                                                          \
    X(ModuleInfo, (const moe_module*, size_t*, size_t*, size_t*, size_t*))                                  \
    X(ModuleName, (const moe_module*, char*, size_t, size_t*))                                              \
    X(RouterCreateUniform, (size_t, moe_router**))                                                          \
    X(RouterCreateFixed, (const float*, size_t, moe_router**))                                              \
    X(RouterCreateArrow, (const moe_module*, const moe_arrow_options*, moe_router**))                       \
    X(RouterCreateLinear,                                                                                   \
      (const float*, size_t, size_t, size_t, const moe_linear_router_options*, moe_router**))               \
    X(RouterCreatePhatgoose,                                                                                \
      (const moe_module*, const char* const*, size_t, const moe_routing_options*, moe_router**))            \
    X(RouterCreateCentroid,                                                                                 \
      (const moe_module*, const char* const*, size_t, const moe_routing_options*, moe_router**))            \
    X(RouterCreateClassifier, (const char*, const moe_routing_options*, moe_router**))                      \
    X(RouterInfo, (const moe_router*, size_t*, size_t*))                                                    \
    X(RouterFree, (moe_router*))                                                                            \
    X(Forward, (moe_session*, const moe_module*, const moe_router*, const float*, size_t, const float*, float*, \
                size_t, int32_t*, float*, size_t))                                                          \
    X(ForwardAssigned, (moe_session*, const moe_module*, const int32_t*, const float*, size_t, int32_t,       \
                        const float*, size_t, const float*, float*, size_t))

static struct {
#define X(name, parameters) int32_t(*name) parameters;
    MANAGED_EXPORTS(X)
#undef X
} managed;

/* ---- Loading the managed side, once per process ---- */

static pthread_once_t start_once = PTHREAD_ONCE_INIT;
static moe_status start_status = MOE_ERROR_BACKEND_UNAVAILABLE;
static char start_message[ERROR_CAPACITY];

__attribute__((format(printf, 1, 2))) static void start_failed(const char* format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(start_message, sizeof start_message, format, args);
    va_end(args);
}

/* The directory holding the managed side: $MOERGING_MANAGED_DIR, else the directory of this library (symbolic
 * links resolved, so libmoerging.so and libmoerging.so.N find it beside the file they name), else its moerging/
 * subdirectory when MANAGED_FILE is there (as cmake --install lays out the hosted build). */
static int managed_directory(char* directory, size_t capacity)
{
    const char* configured = getenv(MANAGED_DIR_VARIABLE);
    if (configured && *configured) {
        return snprintf(directory, capacity, "%s", configured) < (int)capacity;
    }
    Dl_info info;
    char resolved[PATH_MAX];
    if (!dladdr(&start_once, &info) || !info.dli_fname || !realpath(info.dli_fname, resolved)) {
        return 0;
    }
    char* slash = strrchr(resolved, '/');
    if (slash) {
        slash[slash == resolved ? 1 : 0] = '\0';
    }
    char candidate[PATH_MAX];
    int beside = snprintf(candidate, sizeof candidate, "%s/" MANAGED_FILE, resolved) < (int)sizeof candidate &&
                 access(candidate, R_OK) == 0;
    if (!beside &&
        snprintf(candidate, sizeof candidate, "%s/" MANAGED_SUBDIRECTORY "/" MANAGED_FILE, resolved) <
            (int)sizeof candidate &&
        access(candidate, R_OK) == 0) {
        return snprintf(directory, capacity, "%s/" MANAGED_SUBDIRECTORY, resolved) < (int)capacity;
    }
    return snprintf(directory, capacity, "%s", resolved) < (int)capacity; /* the caller says what is missing */
}

static const struct {
    const char* name;
    void** slot;
} entries[] = {
#define X(name, parameters) {#name, (void**)&managed.name},
    MANAGED_EXPORTS(X)
#undef X
};

#ifdef MOE_MANAGED_AOT

/* Fills the entry points from MoErging.Interop.so at `path`; 0 (with the reason recorded) when it cannot. */
static int load_managed(const char* path)
{
    void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!library) {
        start_failed(LOAD_FAILED ": %s", dlerror());
        return 0;
    }
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        char symbol[128];
        snprintf(symbol, sizeof symbol, MANAGED_SYMBOL_PREFIX "%s", entries[i].name);
        *entries[i].slot = dlsym(library, symbol);
        if (!*entries[i].slot) {
            start_failed(LOAD_FAILED ": %s has no entry point %s; libmoerging.so and " MANAGED_FILE " must come "
                         "from one build", path, symbol);
            dlclose(library);
            memset(&managed, 0, sizeof managed); /* no entry point into the unloaded library is left */
            return 0;
        }
    }
    return 1;
}

#else

/* hostfxr explains its failures line by line through this; they are kept for the message. */
static char host_errors[ERROR_CAPACITY / 2];

static void capture_host_error(const char_t* message)
{
    size_t used = strlen(host_errors);
    snprintf(host_errors + used, sizeof host_errors - used, "%s%s", used ? " " : "", message);
}

/* Starts the .NET runtime for MoErging.Interop.dll at `assembly` and fills the entry points from it; 0 (with
 * the reason recorded) when it cannot. */
static int load_managed(const char* assembly)
{
    char config[PATH_MAX];
    size_t directory_length = strlen(assembly) - strlen(MANAGED_FILE);
    if (snprintf(config, sizeof config, "%.*s" MANAGED_CONFIG, (int)directory_length, assembly) >= (int)sizeof config) {
        start_failed(LOAD_FAILED ": the path %s is too long", assembly);
        return 0;
    }
    if (access(config, R_OK) != 0) {
        start_failed(LOAD_FAILED ": %s is missing beside %s; 'dotnet cake --target=" PUBLISH_TARGET "' publishes "
                     "them together", MANAGED_CONFIG, assembly);
        return 0;
    }

    char_t hostfxr_path[PATH_MAX];
    size_t path_size = sizeof hostfxr_path / sizeof(char_t);
    struct get_hostfxr_parameters parameters = {sizeof parameters, assembly, NULL};
    int rc = get_hostfxr_path(hostfxr_path, &path_size, &parameters);
    if (rc != 0) {
        start_failed(LOAD_FAILED ": hostfxr was not found (error 0x%08x); install the .NET 10 runtime, or set "
                     "DOTNET_ROOT to the directory that holds it", (unsigned)rc);
        return 0;
    }
    void* hostfxr = dlopen(hostfxr_path, RTLD_NOW | RTLD_LOCAL);
    if (!hostfxr) {
        start_failed(LOAD_FAILED ": %s", dlerror());
        return 0;
    }
    hostfxr_set_error_writer_fn set_error_writer =
        (hostfxr_set_error_writer_fn)dlsym(hostfxr, "hostfxr_set_error_writer");
    hostfxr_initialize_for_runtime_config_fn initialize =
        (hostfxr_initialize_for_runtime_config_fn)dlsym(hostfxr, "hostfxr_initialize_for_runtime_config");
    hostfxr_get_runtime_delegate_fn get_delegate =
        (hostfxr_get_runtime_delegate_fn)dlsym(hostfxr, "hostfxr_get_runtime_delegate");
    hostfxr_close_fn close_context = (hostfxr_close_fn)dlsym(hostfxr, "hostfxr_close");
    if (!set_error_writer || !initialize || !get_delegate || !close_context) {
        start_failed(LOAD_FAILED ": %s lacks the hosting functions (a .NET older than 3.0?)", hostfxr_path);
        return 0;
    }
    /* Without a writer hostfxr prints to stderr; the caller gets the text through moe_last_error instead. */
    set_error_writer(capture_host_error);
    hostfxr_handle context = NULL;
    load_assembly_and_get_function_pointer_fn load = NULL;
    rc = initialize(config, NULL, &context);
    if (rc < 0 || !context) {
        start_failed("the .NET runtime could not start from %s (error 0x%08x): %s", config, (unsigned)rc,
                     host_errors);
    } else {
        rc = get_delegate(context, hdt_load_assembly_and_get_function_pointer, (void**)&load);
        if (rc < 0 || !load) {
            start_failed(LOAD_FAILED ": no assembly loader (error 0x%08x): %s", (unsigned)rc, host_errors);
            load = NULL;
        }
    }
    if (context) {
        close_context(context);
    }
    set_error_writer(NULL);
    if (!load) {
        return 0;
    }
    for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++) {
        rc = load(assembly, MANAGED_TYPE, entries[i].name, UNMANAGEDCALLERSONLY_METHOD, NULL, entries[i].slot);
        if (rc != 0 || !*entries[i].slot) {
            start_failed("the .NET runtime started, but %s has no entry point %s (error 0x%08x); libmoerging.so and "
                         MANAGED_FILE " must come from one build", assembly, entries[i].name, (unsigned)rc);
            return 0;
        }
    }
    return 1;
}

#endif

static void start_managed(void)
{
#ifdef MOE_MANAGED_AOT
    /* Code for a newer processor would die on its first unknown instruction: refuse before loading it. */
    __builtin_cpu_init();
    if (!__builtin_cpu_supports(INSTRUCTION_SET)) {
        start_status = MOE_ERROR_NOT_SUPPORTED;
        start_failed("this processor lacks the " INSTRUCTION_SET " instruction set (" INSTRUCTION_SET_FEATURES
                     ") that this NativeAOT libmoerging.so is compiled for; use the hosted libmoerging.so "
                     "(artifacts/native, 'dotnet cake --target=Native'), which runs on the .NET runtime");
        return;
    }
#endif
    char directory[PATH_MAX], path[PATH_MAX];
    if (!managed_directory(directory, sizeof directory)) {
        start_failed(LOAD_FAILED ": cannot locate libmoerging.so's own directory; set %s to the directory "
                     "holding " MANAGED_FILE, MANAGED_DIR_VARIABLE);
        return;
    }
    if (snprintf(path, sizeof path, "%s/" MANAGED_FILE, directory) >= (int)sizeof path) {
        start_failed(LOAD_FAILED ": the path %s is too long", directory);
        return;
    }
    if (access(path, R_OK) != 0) {
        start_failed(LOAD_FAILED ": " MANAGED_FILE " is missing from %s (the directory %s names, or else "
                     "libmoerging.so's own or its " MANAGED_SUBDIRECTORY "/); 'dotnet cake --target=" PUBLISH_TARGET
                     "' puts it next to libmoerging.so", directory, MANAGED_DIR_VARIABLE);
        return;
    }
    if (!load_managed(path)) {
        return;
    }
    if (managed.Initialize(receive_error, write_warning, MOE_ABI_VERSION) != MOE_OK) {
        start_failed(MANAGED_FILE " loaded, but refused to initialise: %s", tls_error);
        return;
    }
    start_status = MOE_OK;
}

/* Loads the managed side if needed; on failure records the reason for this thread and returns the status. */
static moe_status managed_ready(void)
{
    pthread_once(&start_once, start_managed);
    if (start_status != MOE_OK) {
        set_error("%s", start_message);
    }
    return start_status;
}

#define REQUIRE_RUNTIME()                                                                                     \
    do {                                                                                                      \
        moe_status ready_ = managed_ready();                                                                  \
        if (ready_ != MOE_OK) {                                                                               \
            return ready_;                                                                                    \
        }                                                                                                     \
    } while (0)

#define CLEAR_OUT(out)                                                                                        \
    do {                                                                                                      \
        if (out) {                                                                                            \
            *(out) = NULL;                                                                                    \
        }                                                                                                     \
    } while (0)

/* ---- Version, status, errors ---- */

uint32_t moe_abi_version(void)
{
    return MOE_ABI_VERSION;
}

const char* moe_version(void)
{
    return MOE_VERSION;
}

const char* moe_status_name(moe_status status)
{
    switch (status) {
    case MOE_OK: return "MOE_OK";
    case MOE_ERROR_INVALID_ARGUMENT: return "MOE_ERROR_INVALID_ARGUMENT";
    case MOE_ERROR_NOT_FOUND: return "MOE_ERROR_NOT_FOUND";
    case MOE_ERROR_FORMAT: return "MOE_ERROR_FORMAT";
    case MOE_ERROR_NOT_SUPPORTED: return "MOE_ERROR_NOT_SUPPORTED";
    case MOE_ERROR_BACKEND_UNAVAILABLE: return "MOE_ERROR_BACKEND_UNAVAILABLE";
    case MOE_ERROR_OUT_OF_MEMORY: return "MOE_ERROR_OUT_OF_MEMORY";
    case MOE_ERROR_INTERNAL: return "MOE_ERROR_INTERNAL";
    }
    return "MOE_STATUS_UNKNOWN";
}

const char* moe_last_error(void)
{
    return tls_error;
}

/* ---- Option structs ----
 * Each struct's first version ends at its last v1 field; later versions only append fields. */

#define FIRST_VERSION_SIZE(type, last_field) (offsetof(type, last_field) + sizeof(((type*)0)->last_field))

/* Writes the defaults into a caller struct of `size` bytes: known fields from `defaults`, newer ones zero. */
static moe_status fill_defaults(void* options, size_t size, const void* defaults, size_t known, size_t first,
                                const char* type)
{
    if (!options) {
        set_error("options is NULL; pass the address of a %s", type);
        return MOE_ERROR_INVALID_ARGUMENT;
    }
    if (size < first || size > MAX_OPTIONS_SIZE) {
        set_error("size is %zu; pass sizeof(%s) (at least %zu)", size, type, first);
        return MOE_ERROR_INVALID_ARGUMENT;
    }
    memset(options, 0, size);
    memcpy(options, defaults, size < known ? size : known);
    *(uint32_t*)options = (uint32_t)size;
    return MOE_OK;
}

/* Reads a caller struct into `full` (which holds the defaults): the fields the caller's version has replace
 * them; fields of a newer version must be zero, since this library cannot honour them. */
static moe_status adopt_options(const void* given, void* full, size_t known, size_t first, const char* type)
{
    if (!given) {
        return MOE_OK;
    }
    uint32_t size;
    memcpy(&size, given, sizeof size);
    if (size < first || size > MAX_OPTIONS_SIZE) {
        set_error("%s.struct_size is %u; fill the struct with its moe_*_default_options function first", type,
                  (unsigned)size);
        return MOE_ERROR_INVALID_ARGUMENT;
    }
    memcpy(full, given, size < known ? size : known);
    for (size_t i = known; i < size; i++) {
        if (((const unsigned char*)given)[i] != 0) {
            set_error("%s sets fields this library does not know (byte %zu of %u is not zero); use a newer "
                      "libmoerging.so or leave them zero", type, i, (unsigned)size);
            return MOE_ERROR_NOT_SUPPORTED;
        }
    }
    *(uint32_t*)full = (uint32_t)known;
    return MOE_OK;
}

static const moe_engine_options engine_defaults = {sizeof(moe_engine_options), MOE_BACKEND_AUTO, 0,
                                                    MOE_WEIGHT_PRECISION_F32};
static const moe_library_options library_defaults = {sizeof(moe_library_options), NULL, 0, 0, 0,
                                                     MOE_WEIGHT_PRECISION_F32};
static const moe_arrow_options arrow_defaults = {sizeof(moe_arrow_options), 0, 0.0f};
static const moe_linear_router_options linear_defaults = {
    sizeof(moe_linear_router_options), 1, 1.0f, MOE_NORMALIZATION_NONE, MOE_SCORE_IDENTITY, NULL, 0};
static const moe_routing_options routing_defaults = {sizeof(moe_routing_options), 0, 1.0f};

#define ENGINE_OPTIONS_FIRST FIRST_VERSION_SIZE(moe_engine_options, cpu_threads)
#define LIBRARY_OPTIONS_FIRST FIRST_VERSION_SIZE(moe_library_options, quiet)
#define ARROW_OPTIONS_FIRST FIRST_VERSION_SIZE(moe_arrow_options, temperature)
#define LINEAR_OPTIONS_FIRST FIRST_VERSION_SIZE(moe_linear_router_options, bias_count)
#define ROUTING_OPTIONS_FIRST FIRST_VERSION_SIZE(moe_routing_options, temperature)

moe_status moe_engine_default_options(moe_engine_options* options, size_t size)
{
    return fill_defaults(options, size, &engine_defaults, sizeof engine_defaults, ENGINE_OPTIONS_FIRST,
                         "moe_engine_options");
}

moe_status moe_library_default_options(moe_library_options* options, size_t size)
{
    return fill_defaults(options, size, &library_defaults, sizeof library_defaults, LIBRARY_OPTIONS_FIRST,
                         "moe_library_options");
}

moe_status moe_arrow_default_options(moe_arrow_options* options, size_t size)
{
    return fill_defaults(options, size, &arrow_defaults, sizeof arrow_defaults, ARROW_OPTIONS_FIRST,
                         "moe_arrow_options");
}

moe_status moe_linear_router_default_options(moe_linear_router_options* options, size_t size)
{
    return fill_defaults(options, size, &linear_defaults, sizeof linear_defaults, LINEAR_OPTIONS_FIRST,
                         "moe_linear_router_options");
}

moe_status moe_routing_default_options(moe_routing_options* options, size_t size)
{
    return fill_defaults(options, size, &routing_defaults, sizeof routing_defaults, ROUTING_OPTIONS_FIRST,
                         "moe_routing_options");
}

/* ---- Forwarders ---- */

moe_status moe_engine_create(const moe_engine_options* options, moe_engine** engine)
{
    CLEAR_OUT(engine);
    moe_engine_options full = engine_defaults;
    moe_status status = adopt_options(options, &full, sizeof full, ENGINE_OPTIONS_FIRST, "moe_engine_options");
    if (status != MOE_OK) {
        return status;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.EngineCreate(&full, engine);
}

moe_status moe_engine_info(const moe_engine* engine, int32_t* backend, char* reason, size_t capacity,
                           size_t* length)
{
    REQUIRE_RUNTIME();
    return (moe_status)managed.EngineInfo(engine, backend, reason, capacity, length);
}

moe_status moe_engine_free(moe_engine* engine)
{
    if (!engine) {
        return MOE_OK;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.EngineFree(engine);
}

moe_status moe_session_create(moe_engine* engine, moe_session** session)
{
    CLEAR_OUT(session);
    REQUIRE_RUNTIME();
    return (moe_status)managed.SessionCreate(engine, session);
}

moe_status moe_session_free(moe_session* session)
{
    if (!session) {
        return MOE_OK;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.SessionFree(session);
}

moe_status moe_library_load(const char* const* directories, size_t count, moe_library** library)
{
    return moe_library_load_with_options(directories, count, NULL, library);
}

moe_status moe_library_load_with_options(const char* const* directories, size_t count,
                                         const moe_library_options* options, moe_library** library)
{
    CLEAR_OUT(library);
    moe_library_options full = library_defaults;
    moe_status status = adopt_options(options, &full, sizeof full, LIBRARY_OPTIONS_FIRST, "moe_library_options");
    if (status != MOE_OK) {
        return status;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.LibraryLoad(directories, count, &full, library);
}

moe_status moe_library_info(const moe_library* library, size_t* expert_count, size_t* module_count)
{
    REQUIRE_RUNTIME();
    return (moe_status)managed.LibraryInfo(library, expert_count, module_count);
}

moe_status moe_library_expert_name(const moe_library* library, size_t expert, char* buffer, size_t capacity,
                                   size_t* length)
{
    REQUIRE_RUNTIME();
    return (moe_status)managed.LibraryExpertName(library, expert, buffer, capacity, length);
}

moe_status moe_library_module(const moe_library* library, size_t index, moe_module** module)
{
    CLEAR_OUT(module);
    REQUIRE_RUNTIME();
    return (moe_status)managed.LibraryModule(library, index, module);
}

moe_status moe_library_find_module(const moe_library* library, const char* name, moe_module** module)
{
    CLEAR_OUT(module);
    REQUIRE_RUNTIME();
    return (moe_status)managed.LibraryFindModule(library, name, module);
}

moe_status moe_library_free(moe_library* library)
{
    if (!library) {
        return MOE_OK;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.LibraryFree(library);
}

moe_status moe_module_info(const moe_module* module, size_t* input_dim, size_t* output_dim, size_t* expert_count,
                           size_t* max_rank)
{
    REQUIRE_RUNTIME();
    return (moe_status)managed.ModuleInfo(module, input_dim, output_dim, expert_count, max_rank);
}

moe_status moe_module_name(const moe_module* module, char* buffer, size_t capacity, size_t* length)
{
    REQUIRE_RUNTIME();
    return (moe_status)managed.ModuleName(module, buffer, capacity, length);
}

moe_status moe_router_create_uniform(size_t expert_count, moe_router** router)
{
    CLEAR_OUT(router);
    REQUIRE_RUNTIME();
    return (moe_status)managed.RouterCreateUniform(expert_count, router);
}

moe_status moe_router_create_fixed(const float* weights, size_t count, moe_router** router)
{
    CLEAR_OUT(router);
    REQUIRE_RUNTIME();
    return (moe_status)managed.RouterCreateFixed(weights, count, router);
}

moe_status moe_router_create_arrow(const moe_module* module, const moe_arrow_options* options, moe_router** router)
{
    CLEAR_OUT(router);
    moe_arrow_options full = arrow_defaults;
    moe_status status = adopt_options(options, &full, sizeof full, ARROW_OPTIONS_FIRST, "moe_arrow_options");
    if (status != MOE_OK) {
        return status;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.RouterCreateArrow(module, &full, router);
}

moe_status moe_router_create_linear(const float* prototypes, size_t prototype_count, size_t expert_count,
                                    size_t input_dim, const moe_linear_router_options* options, moe_router** router)
{
    CLEAR_OUT(router);
    moe_linear_router_options full = linear_defaults;
    moe_status status =
        adopt_options(options, &full, sizeof full, LINEAR_OPTIONS_FIRST, "moe_linear_router_options");
    if (status != MOE_OK) {
        return status;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.RouterCreateLinear(prototypes, prototype_count, expert_count, input_dim, &full,
                                                  router);
}

/* The PHATGOOSE, centroid and classifier constructors share one options type. */
static moe_status adopt_routing_options(const moe_routing_options* given, moe_routing_options* full)
{
    *full = routing_defaults;
    return adopt_options(given, full, sizeof *full, ROUTING_OPTIONS_FIRST, "moe_routing_options");
}

moe_status moe_router_create_phatgoose(const moe_module* module, const char* const* directories, size_t count,
                                       const moe_routing_options* options, moe_router** router)
{
    CLEAR_OUT(router);
    moe_routing_options full;
    moe_status status = adopt_routing_options(options, &full);
    if (status != MOE_OK) {
        return status;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.RouterCreatePhatgoose(module, directories, count, &full, router);
}

moe_status moe_router_create_centroid(const moe_module* module, const char* const* directories, size_t count,
                                      const moe_routing_options* options, moe_router** router)
{
    CLEAR_OUT(router);
    moe_routing_options full;
    moe_status status = adopt_routing_options(options, &full);
    if (status != MOE_OK) {
        return status;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.RouterCreateCentroid(module, directories, count, &full, router);
}

moe_status moe_router_create_classifier(const char* path, const moe_routing_options* options, moe_router** router)
{
    CLEAR_OUT(router);
    moe_routing_options full;
    moe_status status = adopt_routing_options(options, &full);
    if (status != MOE_OK) {
        return status;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.RouterCreateClassifier(path, &full, router);
}

moe_status moe_router_info(const moe_router* router, size_t* expert_count, size_t* top_k)
{
    REQUIRE_RUNTIME();
    return (moe_status)managed.RouterInfo(router, expert_count, top_k);
}

moe_status moe_router_free(moe_router* router)
{
    if (!router) {
        return MOE_OK;
    }
    REQUIRE_RUNTIME();
    return (moe_status)managed.RouterFree(router);
}

moe_status moe_forward(moe_session* session, const moe_module* module, const moe_router* router, const float* x,
                       size_t x_count, const float* base, float* y, size_t y_count, int32_t* expert_ids,
                       float* expert_weights, size_t slot_count)
{
    REQUIRE_RUNTIME();
    return (moe_status)managed.Forward(session, module, router, x, x_count, base, y, y_count, expert_ids,
                                       expert_weights, slot_count);
}

moe_status moe_forward_assigned(moe_session* session, const moe_module* module, const int32_t* expert_ids,
                                const float* expert_weights, size_t slot_count, int32_t top_k, const float* x,
                                size_t x_count, const float* base, float* y, size_t y_count)
{
    REQUIRE_RUNTIME();
    return (moe_status)managed.ForwardAssigned(session, module, expert_ids, expert_weights, slot_count, top_k, x,
                                               x_count, base, y, y_count);
}
