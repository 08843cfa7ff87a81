/*
 * Helpers shared by the C tests (null_and_range.c, stress.c): a CHECK macro
 * that counts failures instead of aborting, and a whole-file reader.
 */
#ifndef HYPERION_EXAMPLES_CHECK_H
#define HYPERION_EXAMPLES_CHECK_H

#include <hyperion/utils/mmap_loader.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static atomic_long check_failures;
static atomic_long check_count;

/* Counts one check; on failure prints where, what, and the last error. */
#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        atomic_fetch_add(&check_count, 1);                                     \
        if (!(cond)) {                                                         \
            const char *check_err_ = hyperionLastError();                      \
            atomic_fetch_add(&check_failures, 1);                              \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__,   \
                    #cond);                                                    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, " (last error: %s)\n",                            \
                    check_err_ ? check_err_ : "none");                         \
        }                                                                      \
    } while (0)

/* Whether the thread's last error is set and contains every one of the
 * given substrings (a NULL-terminated list). */
static inline int error_mentions(const char *first, ...)
{
    const char *err = hyperionLastError();
    if (!err)
        return 0;
    va_list ap;
    va_start(ap, first);
    int ok = 1;
    for (const char *s = first; s; s = va_arg(ap, const char *))
        if (!strstr(err, s))
            ok = 0;
    va_end(ap);
    return ok;
}

/* Reads the whole file at `path` into a malloc'ed buffer; exits on failure. */
static inline unsigned char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(2);
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        perror("fseek");
        exit(2);
    }
    long size = ftell(f);
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) {
        perror("ftell");
        exit(2);
    }
    unsigned char *buf = malloc(size ? (size_t)size : 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "%s: cannot read %ld bytes\n", path, size);
        exit(2);
    }
    fclose(f);
    *len = (size_t)size;
    return buf;
}

/* Prints the summary line and returns the exit status. */
static inline int check_summary(const char *name)
{
    long failed = atomic_load(&check_failures);
    printf("%s: %ld checks, %ld failed\n", name, atomic_load(&check_count),
           failed);
    return failed ? 1 : 0;
}

#endif
