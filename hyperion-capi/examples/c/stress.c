/*
 * Many threads on one model: getting, prefetching, releasing, setting
 * priorities and reading descriptors at random, through a budget small
 * enough that layers are evicted and re-read all the time. Every byte of
 * every layer returned is checked against the file, read with plain stdio at
 * the offsets and sizes the descriptors give.
 *
 * Usage: stress MODEL.tmai [THREADS=8] [OPS_PER_THREAD=1000]
 *
 * Who may release what (a pointer is valid until its layer is released, by
 * any thread): layers 0 and 1 are shared by all threads, which get them
 * under a read lock and release them under the write lock; every other layer
 * belongs to one thread, the only one that gets and releases it. Any thread
 * prefetches, prioritises and describes any layer. Each thread holds at most
 * one of its own layers at a time, so the layers held never exceed
 * THREADS + 2, and the budget is THREADS + 4 layers.
 */
#define _POSIX_C_SOURCE 200809L

#include "check.h"

#include <pthread.h>
#include <stdint.h>

#define SHARED 2

struct layer_info {
    size_t offset, size;
    int precision;
};

static HyperionMappedModel *model;
static int layer_count, threads, ops_per_thread;
static struct layer_info *layers;
static const unsigned char *file;
static size_t budget;
static pthread_rwlock_t shared_lock[SHARED];
static atomic_long gets, bytes_checked, prefetches, releases, evicted_rereads;
static atomic_size_t peak_usage;

static uint64_t next_random(uint64_t *s)
{
    /* xorshift64* */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}

static void verify(int layer, const void *p)
{
    const struct layer_info *l = &layers[layer];
    CHECK(memcmp(p, file + l->offset, l->size) == 0, "layer %d bytes differ from the file", layer);
    atomic_fetch_add(&bytes_checked, (long)l->size);
}

static void release_own(int layer)
{
    hyperionReleaseLayerWeights(model, layer);
    CHECK(hyperionLastError() == NULL, "release(%d)", layer);
    const HyperionLayerDescriptor *d = hyperionGetLayerDescriptor(model, layer);
    CHECK(d && d->cachedWeights == NULL, "layer %d released but still held", layer);
    atomic_fetch_add(&releases, 1);
}

struct worker {
    int id;
    pthread_t thread;
};

static void *work(void *arg)
{
    struct worker *w = arg;
    uint64_t rng = 0x9E3779B97F4A7C15ULL * (uint64_t)(w->id + 1);
    int own_count = 0;
    for (int l = SHARED; l < layer_count; l++)
        own_count += (l - SHARED) % threads == w->id;
    int held = -1;       /* the own layer this thread holds, if any */
    void *held_ptr = NULL;
    uint64_t *seen_count = calloc((size_t)layer_count, sizeof *seen_count);

    for (int op = 0; op < ops_per_thread; op++) {
        int r = (int)(next_random(&rng) % 100);
        int any = (int)(next_random(&rng) % (uint64_t)layer_count);
        if (r < 30 && own_count > 0) {
            /* Get one of this thread's own layers. */
            int k = (int)(next_random(&rng) % (uint64_t)own_count);
            int layer = SHARED + w->id + k * threads;
            if (held >= 0 && held != layer) {
                release_own(held);
                held = -1;
            }
            const HyperionLayerDescriptor *before = hyperionGetLayerDescriptor(model, layer);
            int was_loaded = before && before->isActive;
            void *p = hyperionGetLayerWeights(model, layer);
            CHECK(p != NULL, "get(%d)", layer);
            if (!p)
                continue;
            atomic_fetch_add(&gets, 1);
            if (!was_loaded)
                atomic_fetch_add(&evicted_rereads, 1);
            if (held == layer)
                CHECK(p == held_ptr, "a held layer came back at another address");
            verify(layer, p);
            const HyperionLayerDescriptor *d = hyperionGetLayerDescriptor(model, layer);
            CHECK(d && d->cachedWeights == p && d->isActive, "descriptor of held layer %d", layer);
            if (next_random(&rng) % 2) {
                release_own(layer);
                held = -1;
            } else {
                held = layer;
                held_ptr = p;
            }
        } else if (r < 45) {
            /* Get a shared layer; nobody releases it meanwhile. */
            int layer = (int)(next_random(&rng) % SHARED);
            pthread_rwlock_rdlock(&shared_lock[layer]);
            void *p = hyperionGetLayerWeights(model, layer);
            CHECK(p != NULL, "get(shared %d)", layer);
            if (p) {
                atomic_fetch_add(&gets, 1);
                verify(layer, p);
                const HyperionLayerDescriptor *d = hyperionGetLayerDescriptor(model, layer);
                CHECK(d && d->cachedWeights == p, "shared layer %d: pointer changed", layer);
            }
            pthread_rwlock_unlock(&shared_lock[layer]);
        } else if (r < 50) {
            int layer = (int)(next_random(&rng) % SHARED);
            pthread_rwlock_wrlock(&shared_lock[layer]);
            release_own(layer);
            pthread_rwlock_unlock(&shared_lock[layer]);
        } else if (r < 65) {
            CHECK(hyperionPrefetchLayerWeights(model, any), "prefetch(%d)", any);
            atomic_fetch_add(&prefetches, 1);
        } else if (r < 78) {
            float priority = (float)((int)(next_random(&rng) % 200) - 100) / 10.0f;
            hyperionSetLayerPriority(model, any, priority);
            CHECK(hyperionLastError() == NULL, "set priority(%d)", any);
        } else if (r < 80) {
            hyperionResetLayerPriorities(model);
            CHECK(hyperionLastError() == NULL, "reset priorities");
        } else if (r < 92) {
            const HyperionLayerDescriptor *d = hyperionGetLayerDescriptor(model, any);
            CHECK(d != NULL, "descriptor(%d)", any);
            if (!d)
                continue;
            const struct layer_info *l = &layers[any];
            CHECK(d->layerIndex == any && d->offset == l->offset && d->size == l->size &&
                      d->precision == l->precision,
                  "descriptor(%d) changed its layout", any);
            CHECK(!d->cachedWeights || d->isActive, "held but not active");
            CHECK(d->accessCount >= seen_count[any], "access count went back");
            seen_count[any] = d->accessCount;
        } else {
            size_t usage = hyperionGetMappedModelMemoryUsage(model);
            CHECK(usage <= budget && hyperionLastError() == NULL, "usage %zu > budget %zu",
                  usage, budget);
            size_t peak = atomic_load(&peak_usage);
            while (usage > peak && !atomic_compare_exchange_weak(&peak_usage, &peak, usage))
                ;
        }
    }
    if (held >= 0)
        release_own(held);
    free(seen_count);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.tmai [THREADS] [OPS_PER_THREAD]\n", argv[0]);
        return 2;
    }
    threads = argc > 2 ? atoi(argv[2]) : 8;
    ops_per_thread = argc > 3 ? atoi(argv[3]) : 1000;
    if (threads < 1 || ops_per_thread < 1)
        return 2;
    size_t file_len;
    file = read_file(argv[1], &file_len);

    /* Learn the layer sizes from a throwaway open, then size the budget. */
    HyperionMappedModel *probe = hyperionOpenMappedModel(argv[1], NULL);
    CHECK(probe != NULL, "open %s", argv[1]);
    if (!probe)
        return check_summary("stress");
    layer_count = hyperionGetMappedLayerCount(probe);
    CHECK(layer_count >= SHARED + threads, "%d layers are too few for %d threads",
          layer_count, threads);
    layers = calloc((size_t)layer_count, sizeof *layers);
    size_t largest = 0;
    for (int l = 0; l < layer_count; l++) {
        const HyperionLayerDescriptor *d = hyperionGetLayerDescriptor(probe, l);
        CHECK(d != NULL, "descriptor(%d)", l);
        if (!d)
            return check_summary("stress");
        layers[l] = (struct layer_info){d->offset, d->size, d->precision};
        CHECK(d->offset + d->size <= file_len, "layer %d lies outside the file", l);
        if (d->size > largest)
            largest = d->size;
    }
    hyperionCloseMappedModel(probe);
    if (atomic_load(&check_failures))
        return check_summary("stress");

    size_t granule = 4096;
    budget = (size_t)(threads + SHARED + 2) * ((largest + granule - 1) / granule * granule);
    HyperionMmapConfig config = hyperionCreateDefaultMmapConfig();
    config.maxCacheSize = budget;
    config.prefetchThreads = 2;
    model = hyperionOpenMappedModel(argv[1], &config);
    CHECK(model != NULL, "open with a %zu-byte budget", budget);
    if (!model)
        return check_summary("stress");
    for (int i = 0; i < SHARED; i++)
        pthread_rwlock_init(&shared_lock[i], NULL);

    struct worker *workers = calloc((size_t)threads, sizeof *workers);
    for (int i = 0; i < threads; i++) {
        workers[i].id = i;
        CHECK(pthread_create(&workers[i].thread, NULL, work, &workers[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < threads; i++)
        pthread_join(workers[i].thread, NULL);

    for (int l = 0; l < SHARED; l++)
        hyperionReleaseLayerWeights(model, l);
    for (int l = 0; l < layer_count; l++) {
        const HyperionLayerDescriptor *d = hyperionGetLayerDescriptor(model, l);
        CHECK(d && d->cachedWeights == NULL, "layer %d still held at the end", l);
    }
    size_t usage = hyperionGetMappedModelMemoryUsage(model);
    CHECK(usage <= budget, "final usage %zu > budget %zu", usage, budget);
    hyperionCloseMappedModel(model);
    CHECK(hyperionLastError() == NULL, "close");

    int status = check_summary("stress");
    printf("stress: %d threads x %d ops on %d layers of %zu bytes, budget %zu: "
           "%ld gets (%ld of unloaded layers), %ld MiB checked, %ld prefetches, "
           "%ld releases, peak usage seen %zu\n",
           threads, ops_per_thread, layer_count, largest, budget, atomic_load(&gets),
           atomic_load(&evicted_rereads), atomic_load(&bytes_checked) >> 20,
           atomic_load(&prefetches), atomic_load(&releases), atomic_load(&peak_usage));
    for (int i = 0; i < SHARED; i++)
        pthread_rwlock_destroy(&shared_lock[i]);
    free(workers);
    free(layers);
    free((void *)file);
    return status;
}
