/*
 * The C API's error contract: NULL, out-of-range and closed arguments return
 * NULL / false / 0 / -1 and set hyperionLastError(); successful calls clear
 * it; the last error is per thread; and the basic get/release/descriptor
 * semantics hold.
 *
 * Usage: null_and_range MODEL.tmai   (a model with at least 4 layers of more
 * than 4 KiB each; writes not_a_model.bin in the current directory)
 */
#define _POSIX_C_SOURCE 200809L

#include "check.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <time.h>

static void null_model(void)
{
    CHECK(hyperionGetMappedLayerCount(NULL) == -1, "count(NULL)");
    CHECK(error_mentions("hyperionGetMappedLayerCount", "model is NULL", NULL),
          "count(NULL) error");
    CHECK(hyperionGetLayerDescriptor(NULL, 0) == NULL, "descriptor(NULL)");
    CHECK(error_mentions("hyperionGetLayerDescriptor", "NULL", NULL), "descriptor(NULL) error");
    CHECK(hyperionGetLayerWeights(NULL, 0) == NULL, "weights(NULL)");
    CHECK(error_mentions("hyperionGetLayerWeights", "NULL", NULL), "weights(NULL) error");
    CHECK(!hyperionPrefetchLayerWeights(NULL, 0), "prefetch(NULL)");
    CHECK(error_mentions("hyperionPrefetchLayerWeights", "NULL", NULL), "prefetch(NULL) error");
    hyperionReleaseLayerWeights(NULL, 0);
    CHECK(error_mentions("hyperionReleaseLayerWeights", "NULL", NULL), "release(NULL) error");
    CHECK(hyperionGetMappedModelMemoryUsage(NULL) == 0, "usage(NULL)");
    CHECK(error_mentions("hyperionGetMappedModelMemoryUsage", "NULL", NULL), "usage(NULL) error");
    hyperionSetLayerPriority(NULL, 0, 1.0f);
    CHECK(error_mentions("hyperionSetLayerPriority", "NULL", NULL), "priority(NULL) error");
    hyperionResetLayerPriorities(NULL);
    CHECK(error_mentions("hyperionResetLayerPriorities", "NULL", NULL), "reset(NULL) error");
    hyperionCloseMappedModel(NULL);
    CHECK(error_mentions("hyperionCloseMappedModel", "NULL", NULL), "close(NULL) error");
    /* A handle that was never returned by open: detected, never dereferenced. */
    int not_a_model;
    CHECK(hyperionGetMappedLayerCount((HyperionMappedModel *)&not_a_model) == -1,
          "count(foreign pointer)");
    CHECK(error_mentions("not an open model", NULL), "foreign pointer error");
}

static void bad_opens(const char *path)
{
    CHECK(hyperionOpenMappedModel(NULL, NULL) == NULL, "open(NULL)");
    CHECK(error_mentions("hyperionOpenMappedModel", "filepath is NULL", NULL), "open(NULL) error");

    CHECK(hyperionOpenMappedModel("does-not-exist.tmai", NULL) == NULL, "open(missing)");
    CHECK(error_mentions("does-not-exist.tmai", NULL), "open(missing) names the file");

    FILE *f = fopen("not_a_model.bin", "wb");
    CHECK(f != NULL, "create not_a_model.bin");
    if (f) {
        for (int i = 0; i < 4096; i++)
            fputc(i * 7 + 3, f);
        fclose(f);
        CHECK(hyperionOpenMappedModel("not_a_model.bin", NULL) == NULL, "open(garbage)");
        CHECK(error_mentions("not_a_model.bin", NULL), "open(garbage) names the file");
    }

    HyperionMmapConfig config = hyperionCreateDefaultMmapConfig();
    config.maxCacheSize = 0;
    CHECK(hyperionOpenMappedModel(path, &config) == NULL, "open(maxCacheSize 0)");
    CHECK(error_mentions("maxCacheSize", NULL), "maxCacheSize error");

    config = hyperionCreateDefaultMmapConfig();
    config.prefetchThreads = 0;
    CHECK(hyperionOpenMappedModel(path, &config) == NULL, "open(prefetchThreads 0)");
    CHECK(error_mentions("prefetchThreads", NULL), "prefetchThreads 0 error");
    config.prefetchThreads = -3;
    config.prefetchEnabled = false;
    CHECK(hyperionOpenMappedModel(path, &config) == NULL, "open(prefetchThreads -3)");
    CHECK(error_mentions("prefetchThreads", NULL), "prefetchThreads -3 error");
    config.prefetchThreads = 5000;
    config.prefetchEnabled = true;
    CHECK(hyperionOpenMappedModel(path, &config) == NULL, "open(prefetchThreads 5000)");
    CHECK(error_mentions("prefetchThreads", NULL), "prefetchThreads 5000 error");

    /* Prefetching disabled: 0 threads is fine, and prefetch says why it declines. */
    config = hyperionCreateDefaultMmapConfig();
    config.prefetchEnabled = false;
    config.prefetchThreads = 0;
    HyperionMappedModel *m = hyperionOpenMappedModel(path, &config);
    CHECK(m != NULL, "open(prefetch disabled)");
    CHECK(hyperionLastError() == NULL, "a successful open clears the last error");
    if (m) {
        CHECK(!hyperionPrefetchLayerWeights(m, 0), "prefetch when disabled");
        CHECK(error_mentions("disabled", NULL), "prefetch disabled error");
        hyperionCloseMappedModel(m);
        CHECK(hyperionLastError() == NULL, "close succeeded");
    }

    /* A budget smaller than a layer: a clear error, not a hang. */
    config = hyperionCreateDefaultMmapConfig();
    config.maxCacheSize = 4096;
    m = hyperionOpenMappedModel(path, &config);
    CHECK(m != NULL, "open(4 KiB budget)");
    if (m) {
        CHECK(hyperionGetLayerWeights(m, 0) == NULL, "get a layer larger than the budget");
        CHECK(error_mentions("layer 0", "budget", NULL), "layer too large error");
        CHECK(!hyperionPrefetchLayerWeights(m, 0), "prefetch a layer larger than the budget");
        CHECK(error_mentions("maxCacheSize", NULL), "prefetch too large error");
        hyperionCloseMappedModel(m);
    }
}

static void ranges(HyperionMappedModel *m, int count)
{
    const int bad[] = {-1, INT_MIN, count, count + 1, INT_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int l = bad[i];
        const char *what = l < 0 ? "negative" : "out of range";
        CHECK(hyperionGetLayerWeights(m, l) == NULL, "weights(%d)", l);
        CHECK(error_mentions("hyperionGetLayerWeights", what, NULL), "weights(%d) error", l);
        CHECK(hyperionGetLayerDescriptor(m, l) == NULL, "descriptor(%d)", l);
        CHECK(error_mentions(what, NULL), "descriptor(%d) error", l);
        CHECK(!hyperionPrefetchLayerWeights(m, l), "prefetch(%d)", l);
        CHECK(error_mentions(what, NULL), "prefetch(%d) error", l);
        hyperionReleaseLayerWeights(m, l);
        CHECK(error_mentions("hyperionReleaseLayerWeights", what, NULL), "release(%d) error", l);
        hyperionSetLayerPriority(m, l, 2.0f);
        CHECK(error_mentions("hyperionSetLayerPriority", what, NULL), "priority(%d) error", l);
    }
    hyperionSetLayerPriority(m, 0, NAN);
    CHECK(error_mentions("NaN", NULL), "a NaN priority is refused");
    /* The next successful call clears the last error. */
    CHECK(hyperionGetMappedLayerCount(m) == count, "count");
    CHECK(hyperionLastError() == NULL, "a successful call clears the last error");
}

static void semantics(HyperionMappedModel *m, const unsigned char *file, size_t file_len)
{
    const HyperionLayerDescriptor *d = hyperionGetLayerDescriptor(m, 1);
    CHECK(d != NULL, "descriptor(1)");
    if (!d)
        return;
    CHECK(d->layerIndex == 1 && d->cachedWeights == NULL && !d->isActive, "fresh descriptor");
    CHECK(d->accessCount == 0 && d->lastAccessed == 0 && d->priority == 0.0f, "fresh counters");
    CHECK(d->precision == 32, "precision %d", d->precision);
    CHECK(d->offset + d->size <= file_len && d->size > 4096, "layer inside the file");
    size_t offset = d->offset, size = d->size;

    void *w = hyperionGetLayerWeights(m, 1);
    CHECK(w != NULL, "get(1)");
    if (!w)
        return;
    CHECK(memcmp(w, file + offset, size) == 0, "layer 1 matches the file");
    CHECK(((uintptr_t)w % 4096) == 0, ".tmai layers are 4 KiB aligned");
    const HyperionLayerDescriptor *d2 = hyperionGetLayerDescriptor(m, 1);
    CHECK(d2 == d, "a thread's descriptor pointer for a layer is stable");
    CHECK(d->cachedWeights == w && d->isActive, "descriptor shows the held pointer");
    CHECK(d->accessCount == 1 && d->lastAccessed > 0, "one access recorded");
    CHECK(hyperionGetLayerWeights(m, 1) == w, "getting a held layer returns the same pointer");
    hyperionGetLayerDescriptor(m, 1);
    CHECK(d->accessCount == 2, "second access counted: %llu", (unsigned long long)d->accessCount);
    size_t usage = hyperionGetMappedModelMemoryUsage(m);
    CHECK(usage >= size && hyperionLastError() == NULL, "usage %zu counts the held layer", usage);

    hyperionSetLayerPriority(m, 1, 3.5f);
    CHECK(hyperionLastError() == NULL, "set priority");
    hyperionGetLayerDescriptor(m, 1);
    CHECK(d->priority == 3.5f, "priority %f", d->priority);
    hyperionResetLayerPriorities(m);
    hyperionGetLayerDescriptor(m, 1);
    CHECK(d->priority == 0.0f, "priority reset");

    hyperionReleaseLayerWeights(m, 1);
    CHECK(hyperionLastError() == NULL, "release(1)");
    hyperionGetLayerDescriptor(m, 1);
    CHECK(d->cachedWeights == NULL && !d->isActive, "released: no pointer, not loaded");
    CHECK(hyperionGetMappedModelMemoryUsage(m) == usage - size, "release freed the layer");
    hyperionReleaseLayerWeights(m, 1);
    CHECK(hyperionLastError() == NULL, "releasing a released layer is a no-op");

    /* A prefetched layer is loaded (isActive) but not held (no pointer). */
    CHECK(hyperionPrefetchLayerWeights(m, 2), "prefetch(2)");
    const HyperionLayerDescriptor *d3 = NULL;
    for (int i = 0; i < 2000; i++) {
        d3 = hyperionGetLayerDescriptor(m, 2);
        if (d3 && d3->isActive)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    CHECK(d3 && d3->isActive && d3->cachedWeights == NULL, "prefetched: loaded, not held");
    void *w2 = hyperionGetLayerWeights(m, 2);
    CHECK(w2 && memcmp(w2, file + d3->offset, d3->size) == 0, "layer 2 matches the file");
    hyperionReleaseLayerWeights(m, 2);
}

struct thread_result {
    HyperionMappedModel *m;
    int saw_foreign_error;
    int had_error;
};

static void *other_thread(void *arg)
{
    struct thread_result *r = arg;
    r->saw_foreign_error = hyperionLastError() != NULL;
    r->had_error = hyperionGetLayerWeights(r->m, -1) == NULL && hyperionLastError() != NULL;
    return NULL;
}

static void per_thread_errors(HyperionMappedModel *m)
{
    CHECK(hyperionGetMappedLayerCount(m) > 0 && hyperionLastError() == NULL, "no error here");
    struct thread_result r = {m, 0, 0};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, other_thread, &r) == 0, "pthread_create");
    pthread_join(t, NULL);
    CHECK(!r.saw_foreign_error, "a new thread starts with no last error");
    CHECK(r.had_error, "the other thread saw its own error");
    CHECK(hyperionLastError() == NULL, "another thread's error does not show here");
}

static void closed(HyperionMappedModel *m)
{
    hyperionCloseMappedModel(m);
    CHECK(hyperionLastError() == NULL, "close");
    /* The handle is dead; the library notices (nothing was opened since). */
    CHECK(hyperionGetMappedLayerCount(m) == -1, "count(closed)");
    CHECK(error_mentions("not an open model", NULL), "count(closed) error");
    CHECK(hyperionGetLayerWeights(m, 0) == NULL, "weights(closed)");
    CHECK(hyperionGetLayerDescriptor(m, 0) == NULL, "descriptor(closed)");
    CHECK(!hyperionPrefetchLayerWeights(m, 0), "prefetch(closed)");
    CHECK(hyperionGetMappedModelMemoryUsage(m) == 0, "usage(closed)");
    CHECK(error_mentions("not an open model", NULL), "usage(closed) error");
    hyperionCloseMappedModel(m);
    CHECK(error_mentions("hyperionCloseMappedModel", "not an open model", NULL),
          "a second close is an error, not a double free");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL.tmai\n", argv[0]);
        return 2;
    }
    CHECK(hyperionLastError() == NULL, "no error before any call");
    HyperionMmapConfig config = hyperionCreateDefaultMmapConfig();
    CHECK(config.maxCacheSize >= 256u << 20 && config.prefetchEnabled &&
              config.prefetchThreads == 2 && config.adaptiveCaching &&
              config.minLayerCacheSize == 4096,
          "defaults");
    null_model();
    bad_opens(argv[1]);

    size_t file_len;
    unsigned char *file = read_file(argv[1], &file_len);
    HyperionMappedModel *m = hyperionOpenMappedModel(argv[1], NULL);
    CHECK(m != NULL, "open with the default config (NULL)");
    if (m) {
        int count = hyperionGetMappedLayerCount(m);
        CHECK(count >= 4, "count %d", count);
        ranges(m, count);
        semantics(m, file, file_len);
        per_thread_errors(m);
        closed(m);
    }
    free(file);
    return check_summary("null_and_range");
}
