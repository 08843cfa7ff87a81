/*
 * The header's structs have the field types of docs/api.md, and (on LP64
 * targets) the sizes and offsets that hyperion-capi/src/lib.rs asserts for
 * its #[repr(C)] structs, so C and Rust agree byte for byte. Compile-time
 * checks: building this file is the test (C11).
 */
#include <hyperion/utils/mmap_loader.h>

#include <stdio.h>

#define SAME_TYPE(expr, type) _Generic((expr), type: 1, default: 0)
#define FIELD_TYPE(s, f, type)                                                 \
    _Static_assert(SAME_TYPE(((s *)0)->f, type), #s "." #f " is not " #type)

FIELD_TYPE(HyperionLayerDescriptor, offset, size_t);
FIELD_TYPE(HyperionLayerDescriptor, size, size_t);
FIELD_TYPE(HyperionLayerDescriptor, layerIndex, int);
FIELD_TYPE(HyperionLayerDescriptor, precision, int);
FIELD_TYPE(HyperionLayerDescriptor, cachedWeights, void *);
FIELD_TYPE(HyperionLayerDescriptor, isActive, bool);
FIELD_TYPE(HyperionLayerDescriptor, priority, float);
FIELD_TYPE(HyperionLayerDescriptor, lastAccessed, uint64_t);
FIELD_TYPE(HyperionLayerDescriptor, accessCount, uint64_t);

FIELD_TYPE(HyperionMmapConfig, maxCacheSize, size_t);
FIELD_TYPE(HyperionMmapConfig, prefetchEnabled, bool);
FIELD_TYPE(HyperionMmapConfig, prefetchThreads, int);
FIELD_TYPE(HyperionMmapConfig, adaptiveCaching, bool);
FIELD_TYPE(HyperionMmapConfig, minLayerCacheSize, size_t);

/* The functions have the signatures of docs/api.md. */
static HyperionMmapConfig (*const f_default)(void) = hyperionCreateDefaultMmapConfig;
static HyperionMappedModel *(*const f_open)(const char *, const HyperionMmapConfig *) =
    hyperionOpenMappedModel;
static void (*const f_close)(HyperionMappedModel *) = hyperionCloseMappedModel;
static int (*const f_count)(const HyperionMappedModel *) = hyperionGetMappedLayerCount;
static const HyperionLayerDescriptor *(*const f_desc)(const HyperionMappedModel *, int) =
    hyperionGetLayerDescriptor;
static void *(*const f_get)(HyperionMappedModel *, int) = hyperionGetLayerWeights;
static bool (*const f_prefetch)(HyperionMappedModel *, int) = hyperionPrefetchLayerWeights;
static void (*const f_release)(HyperionMappedModel *, int) = hyperionReleaseLayerWeights;
static size_t (*const f_usage)(const HyperionMappedModel *) = hyperionGetMappedModelMemoryUsage;
static void (*const f_priority)(HyperionMappedModel *, int, float) = hyperionSetLayerPriority;
static void (*const f_reset)(HyperionMappedModel *) = hyperionResetLayerPriorities;
static const char *(*const f_error)(void) = hyperionLastError;

#if UINTPTR_MAX == 0xffffffffffffffffu
#include <stddef.h>
_Static_assert(sizeof(HyperionLayerDescriptor) == 56, "descriptor size");
_Static_assert(offsetof(HyperionLayerDescriptor, offset) == 0, "offset");
_Static_assert(offsetof(HyperionLayerDescriptor, size) == 8, "size");
_Static_assert(offsetof(HyperionLayerDescriptor, layerIndex) == 16, "layerIndex");
_Static_assert(offsetof(HyperionLayerDescriptor, precision) == 20, "precision");
_Static_assert(offsetof(HyperionLayerDescriptor, cachedWeights) == 24, "cachedWeights");
_Static_assert(offsetof(HyperionLayerDescriptor, isActive) == 32, "isActive");
_Static_assert(offsetof(HyperionLayerDescriptor, priority) == 36, "priority");
_Static_assert(offsetof(HyperionLayerDescriptor, lastAccessed) == 40, "lastAccessed");
_Static_assert(offsetof(HyperionLayerDescriptor, accessCount) == 48, "accessCount");
_Static_assert(sizeof(HyperionMmapConfig) == 32, "config size");
_Static_assert(offsetof(HyperionMmapConfig, maxCacheSize) == 0, "maxCacheSize");
_Static_assert(offsetof(HyperionMmapConfig, prefetchEnabled) == 8, "prefetchEnabled");
_Static_assert(offsetof(HyperionMmapConfig, prefetchThreads) == 12, "prefetchThreads");
_Static_assert(offsetof(HyperionMmapConfig, adaptiveCaching) == 16, "adaptiveCaching");
_Static_assert(offsetof(HyperionMmapConfig, minLayerCacheSize) == 24, "minLayerCacheSize");
#else
#error "layout.c knows the layout for LP64 targets only; add this target's numbers"
#endif

int main(void)
{
    int linked = (f_open != NULL) + (f_close != NULL) + (f_count != NULL) + (f_desc != NULL) +
                 (f_get != NULL) + (f_prefetch != NULL) + (f_release != NULL) +
                 (f_usage != NULL) + (f_priority != NULL) + (f_reset != NULL) +
                 (f_error != NULL) + (f_default != NULL);
    HyperionMmapConfig c = f_default();
    printf("layout: descriptor %zu bytes, config %zu bytes, %d functions linked, "
           "default maxCacheSize %zu\n",
           sizeof(HyperionLayerDescriptor), sizeof(HyperionMmapConfig), linked, c.maxCacheSize);
    return linked == 12 ? 0 : 1;
}
