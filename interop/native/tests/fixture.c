#define _GNU_SOURCE
#include "fixture.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the fixture writes safetensors data in host order, which must be little-endian"
#endif

/* splitmix64: small, seedable, good enough for test data. */
uint64_t fixture_next(fixture_rng* rng)
{
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double fixture_uniform(fixture_rng* rng)
{
    return (double)(fixture_next(rng) >> 11) * 0x1.0p-53;
}

double fixture_normal(fixture_rng* rng)
{
    double u1 = 1.0 - fixture_uniform(rng), u2 = fixture_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

void fixture_fill_normal(fixture_rng* rng, float* values, size_t count, double scale)
{
    for (size_t i = 0; i < count; i++) {
        values[i] = (float)(scale * fixture_normal(rng));
    }
}

int fixture_write_text(const char* path, const char* text)
{
    FILE* file = fopen(path, "wb");
    if (!file) {
        return -1;
    }
    size_t length = strlen(text);
    int ok = fwrite(text, 1, length, file) == length;
    return (fclose(file) == 0 && ok) ? 0 : -1;
}

int fixture_write_safetensors(const char* path, int count, const char* const* names, const float* const* data,
                              const int* ranks, const int64_t (*shapes)[2])
{
    /* Header: {"name":{"dtype":"F32","shape":[..],"data_offsets":[begin,end]},...}, space-padded to 8 bytes. */
    size_t capacity = 256 + (size_t)count * 512, used = 0;
    char* header = malloc(capacity);
    if (!header) {
        return -1;
    }
    uint64_t offset = 0;
    used += (size_t)snprintf(header + used, capacity - used, "{");
    for (int i = 0; i < count; i++) {
        uint64_t elements = 1;
        used += (size_t)snprintf(header + used, capacity - used, "%s\"%s\":{\"dtype\":\"F32\",\"shape\":[",
                                 i ? "," : "", names[i]);
        for (int d = 0; d < ranks[i]; d++) {
            used += (size_t)snprintf(header + used, capacity - used, "%s%lld", d ? "," : "", (long long)shapes[i][d]);
            elements *= (uint64_t)shapes[i][d];
        }
        uint64_t end = offset + elements * sizeof(float);
        used += (size_t)snprintf(header + used, capacity - used, "],\"data_offsets\":[%llu,%llu]}",
                                 (unsigned long long)offset, (unsigned long long)end);
        offset = end;
    }
    used += (size_t)snprintf(header + used, capacity - used, "}");
    while (used % 8 != 0 && used + 1 < capacity) {
        header[used++] = ' ';
    }
    if (used + 1 >= capacity) {
        free(header);
        errno = ENAMETOOLONG;
        return -1;
    }

    FILE* file = fopen(path, "wb");
    if (!file) {
        free(header);
        return -1;
    }
    uint64_t length = used; /* little-endian host, checked above */
    int ok = fwrite(&length, sizeof length, 1, file) == 1 && fwrite(header, 1, used, file) == used;
    for (int i = 0; i < count && ok; i++) {
        size_t elements = (size_t)shapes[i][0] * (ranks[i] > 1 ? (size_t)shapes[i][1] : 1);
        ok = fwrite(data[i], sizeof(float), elements, file) == elements;
    }
    free(header);
    return (fclose(file) == 0 && ok) ? 0 : -1;
}

int fixture_write_adapter(const fixture_library* library, int e, const char* directory, const char* config_fields)
{
    const fixture_expert* expert = &library->experts[e];
    char path[PATH_MAX + 64], config[2048], targets[256] = "";
    if (mkdir(directory, 0700) != 0) {
        return -1;
    }
    /* target_modules: the modules' last name components, once each. */
    for (int m = 0; m < library->module_count; m++) {
        const char* last = strrchr(library->modules[m].name, '.');
        last = last ? last + 1 : library->modules[m].name;
        char quoted[80];
        snprintf(quoted, sizeof quoted, "\"%s\"", last);
        if (!strstr(targets, quoted)) {
            size_t used = strlen(targets);
            snprintf(targets + used, sizeof targets - used, "%s%s", used ? ", " : "", quoted);
        }
    }
    snprintf(config, sizeof config,
             "{\n  \"peft_type\": \"LORA\",\n  \"task_type\": \"CAUSAL_LM\",\n  \"r\": %d,\n  \"lora_alpha\": %.17g,\n"
             "  \"use_rslora\": %s,\n  \"use_dora\": false,\n  \"fan_in_fan_out\": false,\n  \"bias\": \"none\",\n"
             "  \"lora_dropout\": 0.0,\n  \"target_modules\": [%s]%s%s\n}\n",
             expert->rank, expert->alpha, expert->use_rslora ? "true" : "false", targets,
             config_fields ? ",\n  " : "", config_fields ? config_fields : "");
    snprintf(path, sizeof path, "%s/adapter_config.json", directory);
    if (fixture_write_text(path, config) != 0) {
        return -1;
    }

    char names[2 * FIXTURE_MAX_MODULES][256];
    const char* name_list[2 * FIXTURE_MAX_MODULES];
    const float* data[2 * FIXTURE_MAX_MODULES];
    int ranks[2 * FIXTURE_MAX_MODULES];
    int64_t shapes[2 * FIXTURE_MAX_MODULES][2];
    for (int m = 0; m < library->module_count; m++) {
        const fixture_module* module = &library->modules[m];
        snprintf(names[2 * m], sizeof names[0], "base_model.model.%s.lora_A.weight", module->name);
        snprintf(names[2 * m + 1], sizeof names[0], "base_model.model.%s.lora_B.weight", module->name);
        name_list[2 * m] = names[2 * m];
        name_list[2 * m + 1] = names[2 * m + 1];
        data[2 * m] = expert->a[m];
        data[2 * m + 1] = expert->b[m];
        ranks[2 * m] = ranks[2 * m + 1] = 2;
        shapes[2 * m][0] = expert->rank;
        shapes[2 * m][1] = module->input_dim;
        shapes[2 * m + 1][0] = module->output_dim;
        shapes[2 * m + 1][1] = expert->rank;
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", directory);
    return fixture_write_safetensors(path, 2 * library->module_count, name_list, data, ranks,
                                     (const int64_t(*)[2])shapes);
}

int fixture_create(fixture_library* library, int experts, const fixture_module* modules, int module_count,
                   fixture_rng* rng)
{
    memset(library, 0, sizeof *library);
    if (module_count < 1 || module_count > FIXTURE_MAX_MODULES || experts < 1) {
        errno = EINVAL;
        return -1;
    }
    const char* tmp = getenv("TMPDIR");
    snprintf(library->root, sizeof library->root, "%s/moerging-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(library->root)) {
        return -1;
    }
    library->expert_count = experts;
    library->module_count = module_count;
    memcpy(library->modules, modules, sizeof(fixture_module) * (size_t)module_count);
    library->experts = calloc((size_t)experts, sizeof(fixture_expert));
    library->paths = calloc((size_t)experts, sizeof(char*));
    if (!library->experts || !library->paths) {
        return -1;
    }
    for (int e = 0; e < experts; e++) {
        fixture_expert* expert = &library->experts[e];
        snprintf(expert->name, sizeof expert->name, "expert-%02d", e);
        expert->rank = 1 + (int)(fixture_next(rng) % FIXTURE_MAX_RANK);
        expert->alpha = 0.5 + 31.5 * fixture_uniform(rng);
        expert->use_rslora = (int)(fixture_next(rng) % 3 == 0);
        expert->scaling = expert->use_rslora ? expert->alpha / sqrt(expert->rank) : expert->alpha / expert->rank;
        for (int m = 0; m < module_count; m++) {
            size_t a_count = (size_t)expert->rank * (size_t)modules[m].input_dim;
            size_t b_count = (size_t)modules[m].output_dim * (size_t)expert->rank;
            expert->a[m] = malloc(a_count * sizeof(float));
            expert->b[m] = malloc(b_count * sizeof(float));
            if (!expert->a[m] || !expert->b[m]) {
                return -1;
            }
            fixture_fill_normal(rng, expert->a[m], a_count, 1.0 / sqrt(modules[m].input_dim));
            fixture_fill_normal(rng, expert->b[m], b_count, 1.0 / sqrt(expert->rank));
        }
        library->paths[e] = malloc(strlen(library->root) + sizeof expert->name + 2);
        if (!library->paths[e]) {
            return -1;
        }
        sprintf(library->paths[e], "%s/%s", library->root, expert->name);
        if (fixture_write_adapter(library, e, library->paths[e], NULL) != 0) {
            return -1;
        }
    }
    return 0;
}

void fixture_remove_adapter(const char* directory)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/adapter_config.json", directory);
    unlink(path);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", directory);
    unlink(path);
    rmdir(directory);
}

void fixture_destroy(fixture_library* library)
{
    for (int e = 0; e < library->expert_count; e++) {
        if (library->paths && library->paths[e]) {
            fixture_remove_adapter(library->paths[e]);
            free(library->paths[e]);
        }
        if (library->experts) {
            for (int m = 0; m < library->module_count; m++) {
                free(library->experts[e].a[m]);
                free(library->experts[e].b[m]);
            }
        }
    }
    if (library->root[0]) {
        rmdir(library->root);
    }
    free(library->paths);
    free(library->experts);
    memset(library, 0, sizeof *library);
}

void fixture_reference_forward(const fixture_library* library, int module, const float* x, int tokens,
                               const float* base, const int32_t* ids, const double* weights, int k, double* y)
{
    int d_in = library->modules[module].input_dim, d_out = library->modules[module].output_dim;
    for (int t = 0; t < tokens; t++) {
        for (int o = 0; o < d_out; o++) {
            y[(size_t)t * d_out + o] = base ? base[(size_t)t * d_out + o] : 0.0;
        }
        for (int s = 0; s < k; s++) {
            int e = ids[t * k + s];
            if (e < 0) {
                continue;
            }
            const fixture_expert* expert = &library->experts[e];
            double v[FIXTURE_MAX_RANK] = {0};
            for (int r = 0; r < expert->rank; r++) {
                for (int i = 0; i < d_in; i++) {
                    v[r] += (double)expert->a[module][r * d_in + i] * x[(size_t)t * d_in + i];
                }
            }
            for (int o = 0; o < d_out; o++) {
                double sum = 0;
                for (int r = 0; r < expert->rank; r++) {
                    sum += (double)expert->b[module][o * expert->rank + r] * v[r];
                }
                y[(size_t)t * d_out + o] += weights[t * k + s] * expert->scaling * sum;
            }
        }
    }
}
