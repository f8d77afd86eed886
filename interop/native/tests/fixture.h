/*
 * Test and benchmark fixture: seeded random LoRA experts written as PEFT adapter directories straight from
 * the documented formats (adapter_config.json + adapter_model.safetensors, F32), and the forward pass in
 * float64 computed from the raw factors, sharing nothing with the engine.
 */
#ifndef MOERGING_FIXTURE_H
#define MOERGING_FIXTURE_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#define FIXTURE_MAX_MODULES 4
#define FIXTURE_MAX_RANK 6

typedef struct fixture_rng {
    uint64_t state;
} fixture_rng;

uint64_t fixture_next(fixture_rng* rng);
/* Uniform in [0, 1). */
double fixture_uniform(fixture_rng* rng);
double fixture_normal(fixture_rng* rng);
void fixture_fill_normal(fixture_rng* rng, float* values, size_t count, double scale);

/* One adapted module: its name in the base model ("model.layers.0.self_attn.q_proj") and shape. */
typedef struct fixture_module {
    const char* name;
    int input_dim;
    int output_dim;
} fixture_module;

typedef struct fixture_expert {
    char name[32];
    int rank;
    double alpha;
    int use_rslora;
    double scaling;                    /* alpha / r, or alpha / sqrt(r) with rsLoRA */
    float* a[FIXTURE_MAX_MODULES];     /* [rank, d_in] */
    float* b[FIXTURE_MAX_MODULES];     /* [d_out, rank] */
} fixture_expert;

typedef struct fixture_library {
    char root[PATH_MAX];               /* a fresh temporary directory holding one directory per expert */
    int expert_count;
    int module_count;
    fixture_module modules[FIXTURE_MAX_MODULES];
    fixture_expert* experts;
    char** paths;                      /* [expert_count] adapter directories */
} fixture_library;

/* Draws `experts` experts (ranks 1 to FIXTURE_MAX_RANK, random alpha, some with rsLoRA) over the modules and writes them
 * under a new temporary directory. Returns 0 on success, -1 with errno on an I/O failure. */
int fixture_create(fixture_library* library, int experts, const fixture_module* modules, int module_count,
                   fixture_rng* rng);

/* Removes the directories and frees the memory. */
void fixture_destroy(fixture_library* library);

/* Writes expert `expert` of the library again as a new adapter directory (its parent must exist), with
 * config_fields (NULL, or JSON members such as "\"base_model_name_or_path\": \"gpt2\"") added to its
 * adapter_config.json. Returns 0 or -1 with errno. */
int fixture_write_adapter(const fixture_library* library, int expert, const char* directory, const char* config_fields);

/* Removes an adapter directory written by fixture_write_adapter. */
void fixture_remove_adapter(const char* directory);

/* Writes a safetensors file of F32 tensors; shapes[i] has ranks[i] dimensions. Returns 0 or -1. */
int fixture_write_safetensors(const char* path, int count, const char* const* names, const float* const* data,
                              const int* ranks, const int64_t (*shapes)[2]);

/* Writes a text file. Returns 0 or -1. */
int fixture_write_text(const char* path, const char* text);

/* y[t] = base[t] + sum over slots of w * s_e * B_e (A_e x[t]) in float64, for module `module`;
 * ids [tokens, k] (-1: empty slot), weights [tokens, k], base [tokens, d_out] or NULL (zeros). */
void fixture_reference_forward(const fixture_library* library, int module, const float* x, int tokens,
                               const float* base, const int32_t* ids, const double* weights, int k, double* y);

#endif
