/*
 * hyperion/utils/mmap_loader.h - Hyperion's memory-mapped model loading API.
 *
 * Serves a model's weights layer by layer within a hard memory budget. The
 * types and functions are those of the mmap_loader API (docs/api.md), with
 * the same names, field order and types, plus hyperionLastError(). The
 * implementation is the Rust crate `hyperion-capi` (hyperion-capi/src/lib.rs)
 * over the crate `hyperion`; link with
 * `pkg-config --cflags --libs hyperion` (see docs/c-api.md).
 *
 * OWNERSHIP AND LIFETIMES
 *   - A HyperionMappedModel* from hyperionOpenMappedModel() is owned by the
 *     caller until passed to hyperionCloseMappedModel(), exactly once.
 *   - A weights pointer from hyperionGetLayerWeights() is owned by the model.
 *     It stays valid until that layer is released (hyperionReleaseLayerWeights,
 *     by any thread) or the model is closed, whatever the cache evicts
 *     meanwhile. The memory is read-only: never write through it.
 *   - A descriptor pointer from hyperionGetLayerDescriptor() points to
 *     storage of the calling thread, valid until the model is closed or the
 *     thread exits.
 *   - A string from hyperionLastError() belongs to the calling thread and is
 *     valid until that thread calls another function of this header.
 *   - Nothing returned here is to be freed by the caller.
 *
 * THREADS
 *   Every function may be called from any thread, and every function except
 *   hyperionCloseMappedModel() may run concurrently with any other on the
 *   same model. hyperionCloseMappedModel() is like free(): no other call on
 *   the model may run during or after it, and no thread may still use a
 *   weights or descriptor pointer of the model. Releasing a layer while
 *   another thread reads its weights is the caller's race to prevent.
 *   The functions may be called from inside an async runtime (a tokio task,
 *   a callback on an event-loop thread): the blocking ones wait on an
 *   internal runtime without deadlocking the caller's. Do not call them in
 *   the child of a fork() made after the first call, and do not dlclose()
 *   the library once used: its internal threads keep running.
 *
 * ERRORS
 *   Every function except hyperionLastError() clears the calling thread's
 *   last error when it succeeds and sets it when it fails; hyperionLastError()
 *   then says what went wrong. Failures return NULL, false, 0 or -1 as each
 *   function states; the void functions report only through the last error.
 *   NULL, negative or out-of-range arguments and handles that are not open
 *   models (closed already, or never opened) are reported as errors, never
 *   crashes. A closed handle is detected unless a later open reused its
 *   address: do not rely on it. No function lets a panic or exception escape.
 */
#ifndef HYPERION_UTILS_MMAP_LOADER_H
#define HYPERION_UTILS_MMAP_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * A memory-mapped model file. Opaque: only ever used through pointers
 * returned by hyperionOpenMappedModel().
 */
typedef struct HyperionMappedModel HyperionMappedModel;

/*
 * A layer in a memory-mapped model, as of the hyperionGetLayerDescriptor()
 * call that returned it.
 */
typedef struct {
    size_t   offset;        /* Offset of layer weights in the mapped file.
                               (safetensors/GGUF layers made of several byte
                               ranges: the first range's offset; the weights
                               are the ranges concatenated.) */
    size_t   size;          /* Size of layer weights in bytes */
    int      layerIndex;    /* Index of the layer in the model */
    int      precision;     /* Precision of the layer weights (bits) */
    void    *cachedWeights; /* The pointer hyperionGetLayerWeights() returned
                               for this layer and that is still valid (the
                               layer was got and not released since), else
                               NULL. Same lifetime and rules as that pointer. */
    bool     isActive;      /* Whether this layer is currently loaded: its
                               bytes are in memory, held through cachedWeights
                               or cached by the loader (e.g. after a prefetch).
                               cachedWeights != NULL implies isActive. */
    float    priority;      /* Priority for cache retention: when memory is
                               needed, lower priorities are evicted first.
                               Default 0. */
    uint64_t lastAccessed;  /* Timestamp of last access: nanoseconds from
                               opening the model to the last fetch of this
                               layer (coarse monotonic clock, 1-4 ms
                               resolution); 0 if never fetched. */
    uint64_t accessCount;   /* Number of times this layer has been accessed:
                               hyperionGetLayerWeights calls for it that got
                               past the argument checks, failed ones too. */
} HyperionLayerDescriptor;

/*
 * Configuration for memory-mapped model loading. Start from
 * hyperionCreateDefaultMmapConfig() and change fields: settings the struct
 * does not carry (I/O backend, direct I/O, checksums, how long a fetch waits
 * for memory) keep their defaults.
 */
typedef struct {
    size_t maxCacheSize;      /* Maximum size of in-memory cache in bytes:
                                 layers cached, held through weights pointers,
                                 or being read, never exceeded. Must be > 0.
                                 Default: 1/4 of RAM, clamped to 256 MiB..16 GiB. */
    bool   prefetchEnabled;   /* Whether to enable weight prefetching.
                                 Default: true. */
    int    prefetchThreads;   /* Number of threads to use for prefetching: the
                                 most prefetch reads in flight at once, 1..1024
                                 (0..1024 when prefetching is disabled).
                                 Default: 2. */
    bool   adaptiveCaching;   /* Whether to use adaptive caching.
                                 Default: true (see docs/caching.md). */
    size_t minLayerCacheSize; /* Minimum cache size per layer in bytes: the
                                 allocation granule, rounded up to 4 KiB; each
                                 cached layer is charged whole granules.
                                 At most 1 TiB. Default: 4096. */
} HyperionMmapConfig;

/* ------------------------------------------------------------------------
 * Opening and closing models
 * ------------------------------------------------------------------------ */

/* Create default configuration. Never fails. */
HyperionMmapConfig hyperionCreateDefaultMmapConfig(void);

/*
 * Open a memory-mapped model file.
 *
 * filepath: a NUL-terminated path (.tmai, safetensors, GGUF: any format the
 *   library reads); read during the call only.
 * config: NULL for the defaults, else a configuration read during the call
 *   only (the caller keeps ownership).
 * Returns a new model, owned by the caller until hyperionCloseMappedModel(),
 * or NULL (invalid config, unreadable or invalid file; see
 * hyperionLastError()). Reads only the file's metadata; layers are read
 * when got or prefetched.
 */
HyperionMappedModel *hyperionOpenMappedModel(const char *filepath,
                                             const HyperionMmapConfig *config);

/*
 * Close a memory-mapped model and release resources.
 *
 * Invalidates the handle, every weights pointer and descriptor pointer of
 * the model. Must not run concurrently with any other call on the model.
 * NULL or a handle that is not open: no effect (the last error says so).
 */
void hyperionCloseMappedModel(HyperionMappedModel *model);

/* ------------------------------------------------------------------------
 * Layer information
 * ------------------------------------------------------------------------ */

/* Get the number of layers in a memory-mapped model; -1 if model is NULL or
 * not an open model. */
int hyperionGetMappedLayerCount(const HyperionMappedModel *model);

/*
 * Get descriptor for a specific layer in the model.
 *
 * Returns a pointer to the layer's descriptor, its fields filled as of this
 * call, or NULL (NULL or closed model, layerIndex out of range). The
 * descriptor lives in storage of the calling thread, one per layer and
 * model: the pointer stays valid until the model is closed or the thread
 * exits, and the thread's next call for the same layer refreshes the same
 * struct. No other thread ever writes it, so reading it is race-free; pass
 * copies, not the pointer, to other threads.
 */
const HyperionLayerDescriptor *hyperionGetLayerDescriptor(
    const HyperionMappedModel *model, int layerIndex);

/* ------------------------------------------------------------------------
 * Layer weight management
 * ------------------------------------------------------------------------ */

/*
 * Get pointer to a layer's weights, loading from disk if necessary.
 *
 * Blocks until the layer's bytes are in memory: returns at once on a cache
 * hit; otherwise reads them (one read however many threads ask), evicting
 * layers that nobody holds, lowest priority first, then least recently used.
 * Returns a pointer to the layer's exact bytes (descriptor.size of them;
 * 4096-byte aligned for .tmai files, whose layers are block-aligned), or
 * NULL on failure: NULL or closed model,
 * layerIndex out of range, a layer larger than maxCacheSize, no memory (the
 * whole budget held by got layers for more than a second), I/O or checksum
 * errors.
 *
 * The pointer is read-only and stays valid until the layer is released or
 * the model closed. Getting a layer again before releasing it returns the
 * same pointer. A got layer is never evicted: release layers you are done
 * with, or later gets fail once got layers fill maxCacheSize.
 */
void *hyperionGetLayerWeights(HyperionMappedModel *model, int layerIndex);

/*
 * Prefetch a layer's weights into memory in anticipation of use.
 *
 * Starts reading the layer in the background and returns at once: true if
 * it is cached, being read, or queued; false if not (prefetching disabled,
 * NULL or closed model, layerIndex out of range, layer larger than
 * maxCacheSize; see hyperionLastError()). At most prefetchThreads prefetch
 * reads run at once. A prefetch that finds no memory to spare when it runs is
 * dropped silently: it never evicts a layer of higher priority, nor waits.
 * A prefetched layer is cached, not held: it does not pin memory.
 */
bool hyperionPrefetchLayerWeights(HyperionMappedModel *model, int layerIndex);

/*
 * Release a layer's weights from memory to free up space.
 *
 * Invalidates the pointer hyperionGetLayerWeights() returned for the layer
 * (for every thread) and drops the loader's cached copy, freeing its memory.
 * A read of the layer in flight is detached: its getters still receive it.
 * Releasing a layer that is not loaded is a no-op. Errors (NULL or closed
 * model, layerIndex out of range) are reported through hyperionLastError().
 */
void hyperionReleaseLayerWeights(HyperionMappedModel *model, int layerIndex);

/* ------------------------------------------------------------------------
 * Cache management
 * ------------------------------------------------------------------------ */

/* Get current memory usage of the mapped model cache: bytes of layer
 * buffers alive now (cached, held through weights pointers, being read),
 * never more than maxCacheSize. 0 if model is NULL or not an open model
 * (check hyperionLastError() to tell that from an empty cache). */
size_t hyperionGetMappedModelMemoryUsage(const HyperionMappedModel *model);

/* Set layer access priority for caching: when memory is needed, layers of
 * lower priority are evicted first. Any value but NaN; default 0. Errors
 * are reported through hyperionLastError(). */
void hyperionSetLayerPriority(HyperionMappedModel *model,
                              int layerIndex, float priority);

/* Reset all layer cache priorities to default values (0). Errors are
 * reported through hyperionLastError(). */
void hyperionResetLayerPriorities(HyperionMappedModel *model);

/* ------------------------------------------------------------------------
 * Errors (Hyperion's addition to the mmap_loader API)
 * ------------------------------------------------------------------------ */

/*
 * Describe the calling thread's last failure.
 *
 * Returns a NUL-terminated message naming the function that failed and why
 * (for file errors, the path and the layer), or NULL if the thread's most
 * recent call of this API succeeded (or it made none). The string belongs to
 * the library and stays valid until the thread's next call of any other
 * function of this header. Never fails; does not change the last error.
 */
const char *hyperionLastError(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* HYPERION_UTILS_MMAP_LOADER_H */
