/*
 * fake_nvml.c - a scenario-driven stand-in for libnvidia-ml.so.1.
 *
 * Built as a shared library with the soname libnvidia-ml.so.1, it is loaded by the real
 * pynvml (through ctypes) and by native samplers (dlopen/dlsym) on machines with no GPU.
 * It declares the handful of NVML types it needs itself, with the layouts of nvml.h.
 *
 * Behaviour is driven by a text scenario file named by $WATTSPAN_FAKE_NVML_SCENARIO and
 * read when the init refcount goes from 0 to 1 (format: README.md beside this file).
 * Every value is a pure function of the scenario and of the call time
 *     t = clock_gettime(CLOCK_MONOTONIC) - epoch_ns,
 * so tests can compute exactly what a call must return (nvml_scenario.py does).
 *
 * Thread safety: the scenario state is immutable once published; only the refcount and
 * the state pointer change, under g_init_lock, and readers load them atomically. A state
 * is freed only when the next 0 -> 1 init replaces it, never by nvmlShutdown, so a reader
 * racing a shutdown sees either valid data or NVML_ERROR_UNINITIALIZED.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

/* ------------------------------------------------------------------ NVML types */

typedef enum nvmlReturn_enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_INSUFFICIENT_POWER = 8,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_IRQ_ISSUE = 11,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_CORRUPTED_INFOROM = 14,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_OPERATING_SYSTEM = 17,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_IN_USE = 19,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_NO_DATA = 21,
    NVML_ERROR_VGPU_ECC_NOT_SUPPORTED = 22,
    NVML_ERROR_INSUFFICIENT_RESOURCES = 23,
    NVML_ERROR_FREQ_NOT_SUPPORTED = 24,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_DEPRECATED = 26,
    NVML_ERROR_NOT_READY = 27,
    NVML_ERROR_GPU_NOT_FOUND = 28,
    NVML_ERROR_INVALID_STATE = 29,
    NVML_ERROR_RESET_TYPE_NOT_SUPPORTED = 30,
    NVML_ERROR_UNKNOWN = 999
} nvmlReturn_t;

typedef enum nvmlValueType_enum {
    NVML_VALUE_TYPE_DOUBLE = 0,
    NVML_VALUE_TYPE_UNSIGNED_INT = 1,
    NVML_VALUE_TYPE_UNSIGNED_LONG = 2,
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3,
    NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4,
    NVML_VALUE_TYPE_SIGNED_INT = 5,
    NVML_VALUE_TYPE_UNSIGNED_SHORT = 6
} nvmlValueType_t;

typedef enum nvmlSamplingType_enum { NVML_TOTAL_POWER_SAMPLES = 0 } nvmlSamplingType_t;
typedef unsigned int nvmlDeviceArchitecture_t;

typedef union nvmlValue_st {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct nvmlFieldValue_st {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;   /* CLOCK_REALTIME microseconds */
    long long latencyUsec;
    nvmlValueType_t valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

typedef struct nvmlSample_st {
    unsigned long long timeStamp;
    nvmlValue_t sampleValue;
} nvmlSample_t;

/* Layout taken by the unversioned nvmlDeviceGetComputeRunningProcesses symbol. */
typedef struct nvmlProcessInfo_v1_st {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

/* Layout taken by the _v2 and _v3 symbols (nvmlProcessInfo_t in nvml.h). */
typedef struct nvmlProcessInfo_st {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct nvmlMemory_st {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct nvmlMemory_v2_st {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct nvmlUtilization_st {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

_Static_assert(sizeof(nvmlValue_t) == 8, "nvmlValue_t layout");
_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t layout");
_Static_assert(sizeof(nvmlSample_t) == 16, "nvmlSample_t layout");
_Static_assert(sizeof(nvmlProcessInfo_v1_t) == 16, "nvmlProcessInfo_v1_t layout");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t layout");
_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t layout");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t layout");
_Static_assert(sizeof(nvmlUtilization_t) == 8, "nvmlUtilization_t layout");

#define NVML_INIT_FLAG_NO_GPUS 1u
#define NVML_MEMORY_V2_VERSION 0x02000028u /* NVML_STRUCT_VERSION(Memory, 2) */
#define NVML_NO_MIG_ID 0xFFFFFFFFu

#define NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION 83
#define NVML_FI_DEV_POWER_AVERAGE 185
#define NVML_FI_DEV_POWER_INSTANT 186
#define NVML_FI_DEV_POWER_CURRENT_LIMIT 190
#define NVML_FI_DEV_ENERGY 191

#define ARCH_VOLTA 5
#define ARCH_AMPERE 7

/* ------------------------------------------------------------------ scenario state */

#define NAME_MAX_LEN 96 /* NVML_DEVICE_NAME_V2_BUFFER_SIZE, NVML_DEVICE_UUID_V2_BUFFER_SIZE */
#define VERSION_MAX_LEN 80 /* NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE */
#define MAX_SAMPLES_DEPTH 1000000u
#define NS_PER_MS 1000000LL

/* 128-bit sums keep energy integrals exact (mW x ns overflows 64 bits after ~3 h at 1 kW). */
__extension__ typedef __int128 i128;
__extension__ typedef unsigned __int128 u128;

struct segment {
    long long start_ns, end_ns; /* scenario time, [start, end) */
    long long mw;
    int line;
};

struct process {
    unsigned int pid;
    unsigned long long used_bytes;
    long long start_ns, end_ns; /* present while start <= t < end */
};

enum sample_clock { SAMPLE_CLOCK_REALTIME, SAMPLE_CLOCK_BOOTTIME };

/* What an nvmlDevice_t points at. All times are scenario ns, powers mW. */
struct nvmlDevice_st {
    unsigned int index;
    char uuid[NAME_MAX_LEN];
    char name[NAME_MAX_LEN];
    unsigned int arch;
    int ga100;
    int cc_major, cc_minor;
    long long idle_mw, limit_mw;
    unsigned long long memory_total_bytes, memory_reserved_bytes;
    long long counter_period_ns, counter_phase_ns;
    unsigned long long counter_offset_mj;
    long long instant_period_ns, instant_window_ns, instant_phase_ns;
    long long average_window_ns;
    unsigned int samples_depth;
    enum sample_clock sample_clock;
    int has_lost;
    long long lost_ns;
    struct segment *segments; /* sorted by start, non-overlapping */
    size_t nsegments;
    long long *resets; /* sorted */
    size_t nresets;
    struct process *processes;
    size_t nprocesses;
};
typedef struct nvmlDevice_st *nvmlDevice_t;

struct fake_state {
    long long epoch_ns;          /* CLOCK_MONOTONIC ns of scenario time 0 */
    long long realtime_off_ns;   /* CLOCK_REALTIME - CLOCK_MONOTONIC */
    long long boottime_off_ns;   /* CLOCK_BOOTTIME - CLOCK_MONOTONIC */
    char driver_version[VERSION_MAX_LEN];
    char nvml_version[VERSION_MAX_LEN];
    int init_error;
    unsigned int ndevices;
    struct nvmlDevice_st *devices;
};

static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_refcount;                 /* atomic loads outside the lock */
static struct fake_state *g_state;     /* atomic loads outside the lock */

#define NO_CLOCK_OVERRIDE LLONG_MIN
static long long g_clock_override = NO_CLOCK_OVERRIDE;

/* ------------------------------------------------------------------ clocks and math */

static long long clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long monotonic_now(void)
{
    long long o = __atomic_load_n(&g_clock_override, __ATOMIC_ACQUIRE);
    return o != NO_CLOCK_OVERRIDE ? o : clock_ns(CLOCK_MONOTONIC);
}

/* Offset of `id` from CLOCK_MONOTONIC, read as mono/other/mono to halve the read skew. */
static long long clock_offset_ns(clockid_t id)
{
    long long m0 = clock_ns(CLOCK_MONOTONIC);
    long long other = clock_ns(id);
    long long m1 = clock_ns(CLOCK_MONOTONIC);
    return other - (m0 + (m1 - m0) / 2);
}

static long long floor_div(long long a, long long b)
{
    long long q = a / b;
    if (a % b != 0 && ((a < 0) != (b < 0)))
        q--;
    return q;
}

/* The last time <= t of the grid phase + k*period (k any integer). */
static long long last_tick(long long t, long long phase, long long period)
{
    return phase + floor_div(t - phase, period) * period;
}

/* Exact integral of the true power over [a, b] in mW*ns (= pJ). Power is idle outside
 * segments, including before scenario time 0. */
static i128 energy_mw_ns(const struct nvmlDevice_st *d, long long a, long long b)
{
    if (b <= a)
        return 0;
    i128 e = (i128)d->idle_mw * (b - a);
    for (size_t i = 0; i < d->nsegments; i++) {
        const struct segment *s = &d->segments[i];
        long long lo = s->start_ns > a ? s->start_ns : a;
        long long hi = s->end_ns < b ? s->end_ns : b;
        if (hi > lo)
            e += (i128)(s->mw - d->idle_mw) * (hi - lo);
    }
    return e;
}

static long long power_mw_at(const struct nvmlDevice_st *d, long long t)
{
    for (size_t i = 0; i < d->nsegments; i++)
        if (d->segments[i].start_ns <= t && t < d->segments[i].end_ns)
            return d->segments[i].mw;
    return d->idle_mw;
}

/* Boxcar average of the true power over [end - window, end], floored to mW. */
static unsigned int boxcar_mw(const struct nvmlDevice_st *d, long long end, long long window)
{
    return (unsigned int)(energy_mw_ns(d, end - window, end) / window);
}

static long long last_publish(const struct nvmlDevice_st *d, long long t)
{
    return last_tick(t, d->instant_phase_ns, d->instant_period_ns);
}

static unsigned int instant_mw(const struct nvmlDevice_st *d, long long t)
{
    return boxcar_mw(d, last_publish(d, t), d->instant_window_ns);
}

static unsigned int average_mw(const struct nvmlDevice_st *d, long long t)
{
    return boxcar_mw(d, last_publish(d, t), d->average_window_ns);
}

static int has_average(const struct nvmlDevice_st *d)
{
    return d->arch >= ARCH_AMPERE && !d->ga100;
}

static int has_energy(const struct nvmlDevice_st *d) { return d->arch >= ARCH_VOLTA; }

/* Energy counter: offset + floor(E(0, u)) with u the last counter update <= t. After a
 * reset at r <= t the counter restarts from 0 and counts E(r, max(u, r)). */
static unsigned long long counter_mj(const struct nvmlDevice_st *d, long long t)
{
    long long u = last_tick(t, d->counter_phase_ns, d->counter_period_ns);
    long long base = 0;
    unsigned long long offset = d->counter_offset_mj;
    for (size_t i = 0; i < d->nresets && d->resets[i] <= t; i++) {
        base = d->resets[i];
        offset = 0;
    }
    long long end = u > base ? u : base;
    return offset + (unsigned long long)(energy_mw_ns(d, base, end) / 1000000000);
}

static unsigned long long sample_timestamp_us(const struct fake_state *s,
                                              const struct nvmlDevice_st *d, long long publish)
{
    long long off = d->sample_clock == SAMPLE_CLOCK_BOOTTIME ? s->boottime_off_ns
                                                             : s->realtime_off_ns;
    return (unsigned long long)floor_div(s->epoch_ns + publish + off, 1000);
}

static long long realtime_now_us(const struct fake_state *s)
{
    long long o = __atomic_load_n(&g_clock_override, __ATOMIC_ACQUIRE);
    if (o != NO_CLOCK_OVERRIDE)
        return floor_div(o + s->realtime_off_ns, 1000);
    return clock_ns(CLOCK_REALTIME) / 1000;
}

static int process_alive(const struct process *p, long long t)
{
    return p->start_ns <= t && t < p->end_ns;
}

static unsigned long long process_memory_bytes(const struct nvmlDevice_st *d, long long t)
{
    unsigned long long sum = 0;
    for (size_t i = 0; i < d->nprocesses; i++)
        if (process_alive(&d->processes[i], t))
            sum += d->processes[i].used_bytes;
    return sum;
}

/* ------------------------------------------------------------------ scenario parsing */

#define MAX_TOKENS 64

struct parser {
    const char *path;
    int line;
    char err[256];
};

#define PARSE_ERROR(p, ...) (snprintf((p)->err, sizeof((p)->err), __VA_ARGS__), -1)

struct kvlist {
    int n;
    char *key[MAX_TOKENS];
    char *val[MAX_TOKENS];
    int used[MAX_TOKENS];
};

/* Splits a line into whitespace-separated tokens in place. A double-quoted stretch keeps its
 * spaces; '#' outside quotes starts a comment. */
static int tokenize(struct parser *p, char *c, char **tok, int *ntok)
{
    int n = 0;
    for (;;) {
        while (*c == ' ' || *c == '\t' || *c == '\r' || *c == '\n')
            c++;
        if (*c == '\0' || *c == '#')
            break;
        if (n == MAX_TOKENS)
            return PARSE_ERROR(p, "more than %d tokens on one line", MAX_TOKENS);
        tok[n++] = c;
        int quoted = 0;
        while (*c != '\0' &&
               (quoted || (*c != ' ' && *c != '\t' && *c != '\r' && *c != '\n' && *c != '#'))) {
            if (*c == '"')
                quoted = !quoted;
            c++;
        }
        if (quoted)
            return PARSE_ERROR(p, "unterminated double quote");
        if (*c == '#') {
            *c = '\0';
            break;
        }
        if (*c != '\0')
            *c++ = '\0';
    }
    *ntok = n;
    return 0;
}

/* A value is either bare (no quotes) or wholly enclosed in one pair of double quotes. */
static int unquote(struct parser *p, char **value)
{
    char *v = *value;
    size_t len = strlen(v);
    if (v[0] == '"') {
        if (len < 2 || v[len - 1] != '"' || memchr(v + 1, '"', len - 2) != NULL)
            return PARSE_ERROR(p, "malformed quoted value %s", v);
        v[len - 1] = '\0';
        *value = v + 1;
    } else if (strchr(v, '"') != NULL) {
        return PARSE_ERROR(p, "quotes must enclose the whole value: %s", v);
    }
    return 0;
}

static int split_kv(struct parser *p, char **tok, int ntok, struct kvlist *kv)
{
    kv->n = 0;
    for (int i = 0; i < ntok; i++) {
        char *eq = strchr(tok[i], '=');
        if (eq == NULL || eq == tok[i])
            return PARSE_ERROR(p, "expected key=value, got '%s'", tok[i]);
        *eq = '\0';
        if (strchr(tok[i], '"') != NULL)
            return PARSE_ERROR(p, "malformed key '%s'", tok[i]);
        for (int j = 0; j < kv->n; j++)
            if (strcmp(kv->key[j], tok[i]) == 0)
                return PARSE_ERROR(p, "duplicate key '%s'", tok[i]);
        char *val = eq + 1;
        if (unquote(p, &val) != 0)
            return -1;
        kv->key[kv->n] = tok[i];
        kv->val[kv->n] = val;
        kv->used[kv->n] = 0;
        kv->n++;
    }
    return 0;
}

static const char *kv_get(struct kvlist *kv, const char *key)
{
    for (int i = 0; i < kv->n; i++)
        if (strcmp(kv->key[i], key) == 0) {
            kv->used[i] = 1;
            return kv->val[i];
        }
    return NULL;
}

static int kv_check_all_used(struct parser *p, const struct kvlist *kv, const char *what)
{
    for (int i = 0; i < kv->n; i++)
        if (!kv->used[i])
            return PARSE_ERROR(p, "unknown key '%s' on a %s line", kv->key[i], what);
    return 0;
}

/* Parses [-]D+[.D+] with at most `scale` decimals into value * 10^scale, exactly. */
static int parse_fixed(const char *s, int scale, int allow_negative, long long *out)
{
    const char *c = s;
    int negative = 0, decimals = -1;
    i128 v = 0;
    if (*c == '-') {
        if (!allow_negative)
            return -1;
        negative = 1;
        c++;
    }
    if (!isdigit((unsigned char)*c))
        return -1;
    for (; *c != '\0'; c++) {
        if (*c == '.') {
            if (decimals >= 0 || !isdigit((unsigned char)c[1]))
                return -1;
            decimals = 0;
            continue;
        }
        if (!isdigit((unsigned char)*c))
            return -1;
        if (decimals >= 0 && ++decimals > scale)
            return -1;
        v = v * 10 + (*c - '0');
        if (v > LLONG_MAX)
            return -1;
    }
    for (int i = decimals < 0 ? 0 : decimals; i < scale; i++) {
        v *= 10;
        if (v > LLONG_MAX)
            return -1;
    }
    *out = negative ? -(long long)v : (long long)v;
    return 0;
}

static int parse_u64(const char *s, unsigned long long *out)
{
    u128 v = 0;
    if (*s == '\0')
        return -1;
    for (const char *c = s; *c != '\0'; c++) {
        if (!isdigit((unsigned char)*c))
            return -1;
        v = v * 10 + (unsigned)(*c - '0');
        if (v > ULLONG_MAX)
            return -1;
    }
    *out = (unsigned long long)v;
    return 0;
}

/* Optional-key readers: leave *out untouched when the key is absent. */
static int get_ms(struct parser *p, struct kvlist *kv, const char *key, int allow_negative,
                  long long *out)
{
    const char *v = kv_get(kv, key);
    if (v != NULL && parse_fixed(v, 6, allow_negative, out) != 0)
        return PARSE_ERROR(p, "%s=%s: expected %smilliseconds with at most 6 decimals", key, v,
                           allow_negative ? "" : "non-negative ");
    return 0;
}

static int get_watts_mw(struct parser *p, struct kvlist *kv, const char *key, long long *out)
{
    const char *v = kv_get(kv, key);
    if (v != NULL && parse_fixed(v, 3, 0, out) != 0)
        return PARSE_ERROR(p, "%s=%s: expected non-negative watts with at most 3 decimals", key,
                           v);
    return 0;
}

static int get_uint(struct parser *p, struct kvlist *kv, const char *key, unsigned long long max,
                    unsigned long long *out)
{
    const char *v = kv_get(kv, key);
    if (v != NULL && (parse_u64(v, out) != 0 || *out > max))
        return PARSE_ERROR(p, "%s=%s: expected an integer in [0, %llu]", key, v, max);
    return 0;
}

static int require(struct parser *p, struct kvlist *kv, const char *key, const char *what)
{
    for (int i = 0; i < kv->n; i++)
        if (strcmp(kv->key[i], key) == 0)
            return 0;
    return PARSE_ERROR(p, "%s line needs %s=", what, key);
}

static int get_string(struct parser *p, struct kvlist *kv, const char *key, char *dst,
                      size_t cap)
{
    const char *v = kv_get(kv, key);
    if (v == NULL)
        return 0;
    if (v[0] == '\0' || strlen(v) >= cap)
        return PARSE_ERROR(p, "%s must be 1..%zu characters", key, cap - 1);
    strcpy(dst, v);
    return 0;
}

static void *grow(void *array, size_t count, size_t size)
{
    /* Doubles at powers of two; count is the number of elements before the append. */
    if (count != 0 && (count & (count - 1)) != 0)
        return array;
    return realloc(array, (count == 0 ? 1 : 2 * count) * size);
}

static void default_compute_capability(struct nvmlDevice_st *d)
{
    static const int table[][2] = {
        [2] = {3, 5}, [3] = {5, 2}, [4] = {6, 0}, [5] = {7, 0},
        [6] = {7, 5}, [7] = {8, 6}, [8] = {8, 9}, [9] = {9, 0}, [10] = {10, 0},
    };
    if (d->arch < sizeof table / sizeof table[0]) {
        d->cc_major = table[d->arch][0];
        d->cc_minor = table[d->arch][1];
    }
    if (d->arch == ARCH_AMPERE && d->ga100)
        d->cc_minor = 0;
}

static int parse_gpu(struct parser *p, struct fake_state *s, struct kvlist *kv)
{
    unsigned long long u;
    struct nvmlDevice_st *grown = grow(s->devices, s->ndevices, sizeof *s->devices);
    if (grown == NULL)
        return PARSE_ERROR(p, "out of memory");
    s->devices = grown;
    struct nvmlDevice_st *d = &s->devices[s->ndevices];
    memset(d, 0, sizeof *d);
    s->ndevices++;

    /* Defaults: an H100 SXM with the sensor timing of the reference's A.6 table. */
    strcpy(d->name, "NVIDIA H100 80GB HBM3");
    d->arch = 9;
    d->idle_mw = 60000;
    d->limit_mw = 700000;
    d->memory_total_bytes = 81559ULL << 20;
    d->counter_period_ns = 100 * NS_PER_MS;
    d->instant_period_ns = 100 * NS_PER_MS;
    d->instant_window_ns = 25 * NS_PER_MS;
    d->average_window_ns = 1000 * NS_PER_MS;
    d->samples_depth = 120;
    d->cc_major = -1;

    if (require(p, kv, "index", "gpu") || require(p, kv, "uuid", "gpu"))
        return -1;
    if (get_uint(p, kv, "index", UINT_MAX, &u))
        return -1;
    if (u != s->ndevices - 1)
        return PARSE_ERROR(p, "gpu index=%llu out of order (expected %u)", u, s->ndevices - 1);
    d->index = (unsigned int)u;
    if (get_string(p, kv, "uuid", d->uuid, sizeof d->uuid) ||
        get_string(p, kv, "name", d->name, sizeof d->name))
        return -1;
    u = d->arch;
    if (get_uint(p, kv, "arch", 1000, &u))
        return -1;
    d->arch = (unsigned int)u;
    u = 0;
    if (get_uint(p, kv, "ga100", 1, &u))
        return -1;
    d->ga100 = (int)u;

    const char *cc = kv_get(kv, "compute_capability");
    if (cc != NULL) {
        int major, minor, used = 0;
        if (sscanf(cc, "%3d.%3d%n", &major, &minor, &used) != 2 || cc[used] != '\0' ||
            !isdigit((unsigned char)cc[0]) || major < 0 || minor < 0)
            return PARSE_ERROR(p, "compute_capability=%s: expected MAJOR.MINOR", cc);
        d->cc_major = major;
        d->cc_minor = minor;
    } else {
        d->cc_major = d->cc_minor = 0;
        default_compute_capability(d);
    }

    if (get_watts_mw(p, kv, "idle_w", &d->idle_mw) ||
        get_watts_mw(p, kv, "power_limit_w", &d->limit_mw))
        return -1;
    if (d->limit_mw <= d->idle_mw)
        return PARSE_ERROR(p, "power_limit_w must be greater than idle_w");

    u = d->memory_total_bytes >> 20;
    if (get_uint(p, kv, "memory_total_mib", 1ULL << 40, &u))
        return -1;
    d->memory_total_bytes = u << 20;
    u = 0;
    if (get_uint(p, kv, "memory_reserved_mib", 1ULL << 40, &u))
        return -1;
    d->memory_reserved_bytes = u << 20;

    if (get_ms(p, kv, "counter_period_ms", 0, &d->counter_period_ns) ||
        get_ms(p, kv, "counter_phase_ms", 1, &d->counter_phase_ns) ||
        get_ms(p, kv, "instant_period_ms", 0, &d->instant_period_ns) ||
        get_ms(p, kv, "instant_window_ms", 0, &d->instant_window_ns) ||
        get_ms(p, kv, "instant_phase_ms", 1, &d->instant_phase_ns) ||
        get_ms(p, kv, "average_window_ms", 0, &d->average_window_ns))
        return -1;
    if (d->counter_period_ns <= 0 || d->instant_window_ns <= 0 || d->average_window_ns <= 0)
        return PARSE_ERROR(p, "periods and windows must be positive");
    /* Below 1 us two publishes could share a microsecond timestamp. */
    if (d->instant_period_ns < 1000)
        return PARSE_ERROR(p, "instant_period_ms must be at least 0.001");

    if (get_uint(p, kv, "counter_offset_mj", ULLONG_MAX, &d->counter_offset_mj))
        return -1;
    u = d->samples_depth;
    if (get_uint(p, kv, "samples_depth", MAX_SAMPLES_DEPTH, &u))
        return -1;
    d->samples_depth = (unsigned int)u;

    const char *clock = kv_get(kv, "sample_clock");
    if (clock != NULL) {
        if (strcmp(clock, "realtime") == 0)
            d->sample_clock = SAMPLE_CLOCK_REALTIME;
        else if (strcmp(clock, "boottime") == 0)
            d->sample_clock = SAMPLE_CLOCK_BOOTTIME;
        else
            return PARSE_ERROR(p, "sample_clock=%s: expected realtime or boottime", clock);
    }

    for (unsigned int i = 0; i + 1 < s->ndevices; i++)
        if (strcmp(s->devices[i].uuid, d->uuid) == 0)
            return PARSE_ERROR(p, "duplicate uuid %s", d->uuid);
    return kv_check_all_used(p, kv, "gpu");
}

static int get_gpu_ref(struct parser *p, struct fake_state *s, struct kvlist *kv,
                       const char *what, struct nvmlDevice_st **out)
{
    unsigned long long u;
    if (require(p, kv, "gpu", what) || get_uint(p, kv, "gpu", UINT_MAX, &u))
        return -1;
    if (u >= s->ndevices)
        return PARSE_ERROR(p, "gpu=%llu is not defined on an earlier gpu line", u);
    *out = &s->devices[u];
    return 0;
}

static int parse_segment(struct parser *p, struct fake_state *s, struct kvlist *kv)
{
    struct nvmlDevice_st *d;
    struct segment seg = {.line = p->line};
    if (get_gpu_ref(p, s, kv, "segment", &d) || require(p, kv, "start_ms", "segment") ||
        require(p, kv, "end_ms", "segment") || require(p, kv, "watts", "segment") ||
        get_ms(p, kv, "start_ms", 0, &seg.start_ns) || get_ms(p, kv, "end_ms", 0, &seg.end_ns) ||
        get_watts_mw(p, kv, "watts", &seg.mw) || kv_check_all_used(p, kv, "segment"))
        return -1;
    if (seg.end_ns <= seg.start_ns)
        return PARSE_ERROR(p, "segment end_ms must be greater than start_ms");
    struct segment *grown = grow(d->segments, d->nsegments, sizeof *d->segments);
    if (grown == NULL)
        return PARSE_ERROR(p, "out of memory");
    d->segments = grown;
    d->segments[d->nsegments++] = seg;
    return 0;
}

static int parse_event(struct parser *p, struct fake_state *s, struct kvlist *kv, int is_reset)
{
    const char *what = is_reset ? "reset" : "lost";
    struct nvmlDevice_st *d;
    long long at = 0;
    if (get_gpu_ref(p, s, kv, what, &d) || require(p, kv, "at_ms", what) ||
        get_ms(p, kv, "at_ms", 0, &at) || kv_check_all_used(p, kv, what))
        return -1;
    if (!is_reset) {
        if (d->has_lost)
            return PARSE_ERROR(p, "gpu %u already has a lost line", d->index);
        d->has_lost = 1;
        d->lost_ns = at;
        return 0;
    }
    long long *grown = grow(d->resets, d->nresets, sizeof *d->resets);
    if (grown == NULL)
        return PARSE_ERROR(p, "out of memory");
    d->resets = grown;
    d->resets[d->nresets++] = at;
    return 0;
}

static int parse_process(struct parser *p, struct fake_state *s, struct kvlist *kv)
{
    struct nvmlDevice_st *d;
    unsigned long long pid, mib;
    struct process proc = {.start_ns = LLONG_MIN, .end_ns = LLONG_MAX};
    if (get_gpu_ref(p, s, kv, "process", &d) || require(p, kv, "pid", "process") ||
        require(p, kv, "used_memory_mib", "process") ||
        get_uint(p, kv, "pid", UINT_MAX, &pid) ||
        get_uint(p, kv, "used_memory_mib", 1ULL << 40, &mib) ||
        get_ms(p, kv, "start_ms", 0, &proc.start_ns) || get_ms(p, kv, "end_ms", 0, &proc.end_ns) ||
        kv_check_all_used(p, kv, "process"))
        return -1;
    if (proc.end_ns <= proc.start_ns)
        return PARSE_ERROR(p, "process end_ms must be greater than start_ms");
    proc.pid = (unsigned int)pid;
    proc.used_bytes = mib << 20;
    struct process *grown = grow(d->processes, d->nprocesses, sizeof *d->processes);
    if (grown == NULL)
        return PARSE_ERROR(p, "out of memory");
    d->processes = grown;
    d->processes[d->nprocesses++] = proc;
    return 0;
}

/* Single-value directives: "name value". */
static int parse_setting(struct parser *p, struct fake_state *s, char **tok, int ntok,
                         unsigned *seen)
{
    static const char *const names[] = {"epoch_ns",           "realtime_offset_ns",
                                        "boottime_offset_ns", "driver_version",
                                        "nvml_version",       "init_error"};
    int which = -1;
    for (int i = 0; i < (int)(sizeof names / sizeof names[0]); i++)
        if (strcmp(tok[0], names[i]) == 0)
            which = i;
    if (which < 0)
        return PARSE_ERROR(p, "unknown directive '%s'", tok[0]);
    if (ntok != 2)
        return PARSE_ERROR(p, "%s takes exactly one value", tok[0]);
    if (*seen & (1u << which))
        return PARSE_ERROR(p, "%s given twice", tok[0]);
    *seen |= 1u << which;
    char *v = tok[1];
    if (unquote(p, &v) != 0)
        return -1;
    long long n;
    switch (which) {
    case 0:
    case 1:
    case 2:
        if (parse_fixed(v, 0, 1, &n) != 0)
            return PARSE_ERROR(p, "%s %s: expected an integer", tok[0], v);
        if (which == 0)
            s->epoch_ns = n;
        else if (which == 1)
            s->realtime_off_ns = n;
        else
            s->boottime_off_ns = n;
        return 0;
    case 3:
    case 4: {
        char *dst = which == 3 ? s->driver_version : s->nvml_version;
        if (v[0] == '\0' || strlen(v) >= VERSION_MAX_LEN)
            return PARSE_ERROR(p, "%s must be 1..%d characters", tok[0], VERSION_MAX_LEN - 1);
        strcpy(dst, v);
        return 0;
    }
    default:
        if (parse_fixed(v, 0, 0, &n) != 0 || n > INT_MAX)
            return PARSE_ERROR(p, "init_error %s: expected an NVML return code", v);
        s->init_error = (int)n;
        return 0;
    }
}

static int cmp_segments(const void *a, const void *b)
{
    long long x = ((const struct segment *)a)->start_ns, y = ((const struct segment *)b)->start_ns;
    return (x > y) - (x < y);
}

static int cmp_ll(const void *a, const void *b)
{
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

static int finish_devices(struct parser *p, struct fake_state *s)
{
    for (unsigned int i = 0; i < s->ndevices; i++) {
        struct nvmlDevice_st *d = &s->devices[i];
        if (d->nsegments > 1)
            qsort(d->segments, d->nsegments, sizeof *d->segments, cmp_segments);
        for (size_t k = 1; k < d->nsegments; k++)
            if (d->segments[k].start_ns < d->segments[k - 1].end_ns) {
                const struct segment *a = &d->segments[k - 1], *b = &d->segments[k];
                p->line = a->line > b->line ? a->line : b->line;
                return PARSE_ERROR(p, "segment overlaps the one on line %d (gpu %u)",
                                   a->line < b->line ? a->line : b->line, i);
            }
        if (d->nresets > 1)
            qsort(d->resets, d->nresets, sizeof *d->resets, cmp_ll);
    }
    return 0;
}

static void free_state(struct fake_state *s)
{
    if (s == NULL)
        return;
    for (unsigned int i = 0; i < s->ndevices; i++) {
        free(s->devices[i].segments);
        free(s->devices[i].resets);
        free(s->devices[i].processes);
    }
    free(s->devices);
    free(s);
}

static int parse_stream(struct parser *p, FILE *f, struct fake_state *s)
{
    char *line = NULL, *tok[MAX_TOKENS];
    size_t cap = 0;
    int ntok, rc = 0, have_version = 0;
    unsigned seen = 0;
    struct kvlist kv;

    p->line = 0;
    while (rc == 0 && getline(&line, &cap, f) >= 0) {
        p->line++;
        if ((rc = tokenize(p, line, tok, &ntok)) != 0 || ntok == 0)
            continue;
        if (!have_version) {
            if (strcmp(tok[0], "version") != 0 || ntok != 2 || strcmp(tok[1], "1") != 0)
                rc = PARSE_ERROR(p, "the first directive must be 'version 1'");
            have_version = 1;
            continue;
        }
        int is_kv_line = 1;
        if (strcmp(tok[0], "gpu") == 0 || strcmp(tok[0], "segment") == 0 ||
            strcmp(tok[0], "lost") == 0 || strcmp(tok[0], "reset") == 0 ||
            strcmp(tok[0], "process") == 0)
            rc = split_kv(p, tok + 1, ntok - 1, &kv);
        else
            is_kv_line = 0;
        if (rc != 0)
            break;
        if (!is_kv_line)
            rc = strcmp(tok[0], "version") == 0 ? PARSE_ERROR(p, "version given twice")
                                               : parse_setting(p, s, tok, ntok, &seen);
        else if (strcmp(tok[0], "gpu") == 0)
            rc = parse_gpu(p, s, &kv);
        else if (strcmp(tok[0], "segment") == 0)
            rc = parse_segment(p, s, &kv);
        else if (strcmp(tok[0], "process") == 0)
            rc = parse_process(p, s, &kv);
        else
            rc = parse_event(p, s, &kv, strcmp(tok[0], "reset") == 0);
    }
    if (rc == 0 && ferror(f))
        rc = PARSE_ERROR(p, "read error: %s", strerror(errno));
    if (rc == 0 && !have_version)
        rc = PARSE_ERROR(p, "empty scenario (the first directive must be 'version 1')");
    if (rc == 0)
        rc = finish_devices(p, s);
    free(line);
    if (rc == 0) {
        if (!(seen & 1u))
            s->epoch_ns = clock_ns(CLOCK_MONOTONIC);
        if (!(seen & 2u))
            s->realtime_off_ns = clock_offset_ns(CLOCK_REALTIME);
        if (!(seen & 4u))
            s->boottime_off_ns = clock_offset_ns(CLOCK_BOOTTIME);
        if (!(seen & 16u))
            snprintf(s->nvml_version, sizeof s->nvml_version, "12.%.76s", s->driver_version);
    }
    return rc;
}

static nvmlReturn_t load_scenario(struct fake_state **out)
{
    const char *path = getenv("WATTSPAN_FAKE_NVML_SCENARIO");
    if (path == NULL || path[0] == '\0')
        return NVML_ERROR_DRIVER_NOT_LOADED; /* like a host without the driver */
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "fake_nvml: %s: cannot open scenario: %s\n", path, strerror(errno));
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    struct fake_state *s = calloc(1, sizeof *s);
    if (s == NULL) {
        fclose(f);
        return NVML_ERROR_MEMORY;
    }
    strcpy(s->driver_version, "550.54.15");
    struct parser p = {.path = path};
    int rc = parse_stream(&p, f, s);
    fclose(f);
    if (rc != 0) {
        fprintf(stderr, "fake_nvml: %s:%d: %s\n", path, p.line, p.err);
        free_state(s);
        return NVML_ERROR_UNKNOWN;
    }
    *out = s;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ lifecycle */

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&g_init_lock);
    if (g_refcount == 0) {
        struct fake_state *fresh = NULL;
        rc = load_scenario(&fresh);
        if (rc == NVML_SUCCESS && fresh->init_error != 0)
            rc = (nvmlReturn_t)fresh->init_error;
        else if (rc == NVML_SUCCESS && fresh->ndevices == 0 && !(flags & NVML_INIT_FLAG_NO_GPUS))
            rc = NVML_ERROR_GPU_NOT_FOUND;
        if (rc != NVML_SUCCESS) {
            free_state(fresh);
        } else {
            /* No reader can hold the old state here except one racing a full shutdown. */
            free_state(g_state);
            __atomic_store_n(&g_state, fresh, __ATOMIC_RELEASE);
        }
    }
    if (rc == NVML_SUCCESS)
        __atomic_store_n(&g_refcount, g_refcount + 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_init_lock);
    return rc;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
EXPORT nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }

/* Extra shutdowns are not an error (nvml.h: "for backwards compatibility"). */
EXPORT nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&g_init_lock);
    if (g_refcount > 0)
        __atomic_store_n(&g_refcount, g_refcount - 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&g_init_lock);
    return NVML_SUCCESS;
}

/* Test hook, not part of NVML: freeze CLOCK_MONOTONIC as seen by this library at
 * `monotonic_ns` (frozen != 0) or go back to the real clock (frozen == 0). While frozen,
 * CLOCK_REALTIME is derived as monotonic + the scenario's realtime offset. */
EXPORT void wattspanFakeNvmlSetClock(int frozen, long long monotonic_ns)
{
    __atomic_store_n(&g_clock_override, frozen ? monotonic_ns : NO_CLOCK_OVERRIDE,
                     __ATOMIC_RELEASE);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    /* Codes 1-18, 20 and 999 carry pynvml's strings, which mirror the driver's. */
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_VGPU_ECC_NOT_SUPPORTED:
        return "The requested vgpu operation is not available on target device because ECC is "
               "enabled";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Ran out of critical resources, other than memory";
    case NVML_ERROR_FREQ_NOT_SUPPORTED: return "Frequency not supported";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "The requested functionality has been deprecated";
    case NVML_ERROR_NOT_READY: return "System is not ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "No GPUs were found";
    case NVML_ERROR_INVALID_STATE: return "Resource not in correct state";
    case NVML_ERROR_RESET_TYPE_NOT_SUPPORTED: return "Reset not supported";
    default: return "Unknown Error";
    }
}

/* ------------------------------------------------------------------ call plumbing */

static const struct fake_state *live_state(void)
{
    if (__atomic_load_n(&g_refcount, __ATOMIC_ACQUIRE) <= 0)
        return NULL;
    return __atomic_load_n(&g_state, __ATOMIC_ACQUIRE);
}

static int is_lost(const struct nvmlDevice_st *d, long long t)
{
    return d->has_lost && t >= d->lost_ns;
}

/* Common prologue of per-device calls, in NVML's order of checks: initialized, valid
 * handle, valid output pointers, device still on the bus. */
static nvmlReturn_t open_device(nvmlDevice_t handle, int args_ok, const struct fake_state **sp,
                                const struct nvmlDevice_st **dp, long long *tp)
{
    const struct fake_state *s = live_state();
    if (s == NULL)
        return NVML_ERROR_UNINITIALIZED;
    uintptr_t h = (uintptr_t)handle, base = (uintptr_t)s->devices;
    if (handle == NULL || h < base || h >= base + s->ndevices * sizeof *s->devices ||
        (h - base) % sizeof *s->devices != 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!args_ok)
        return NVML_ERROR_INVALID_ARGUMENT;
    long long t = monotonic_now() - s->epoch_ns;
    if (is_lost(handle, t))
        return NVML_ERROR_GPU_IS_LOST;
    *sp = s;
    *dp = handle;
    *tp = t;
    return NVML_SUCCESS;
}

#define OPEN_DEVICE(handle, args_ok)                                                       \
    const struct fake_state *s;                                                            \
    const struct nvmlDevice_st *d;                                                         \
    long long t;                                                                           \
    do {                                                                                   \
        nvmlReturn_t rc_ = open_device((handle), (args_ok), &s, &d, &t);                   \
        if (rc_ != NVML_SUCCESS)                                                           \
            return rc_;                                                                    \
    } while (0)

static nvmlReturn_t copy_string(char *dst, unsigned int length, const char *src)
{
    size_t n = strlen(src);
    if (length < n + 1)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, n + 1);
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ system queries */

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    const struct fake_state *s = live_state();
    if (s == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (version == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    return copy_string(version, length, s->driver_version);
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    const struct fake_state *s = live_state();
    if (s == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (version == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    return copy_string(version, length, s->nvml_version);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    const struct fake_state *s = live_state();
    if (s == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (deviceCount == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = s->ndevices;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount)
{
    return nvmlDeviceGetCount_v2(deviceCount);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    const struct fake_state *s = live_state();
    if (s == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (device == NULL || index >= s->ndevices)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (is_lost(&s->devices[index], monotonic_now() - s->epoch_ns))
        return NVML_ERROR_GPU_IS_LOST;
    *device = &s->devices[index];
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    const struct fake_state *s = live_state();
    if (s == NULL)
        return NVML_ERROR_UNINITIALIZED;
    if (uuid == NULL || device == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < s->ndevices; i++)
        if (strcmp(s->devices[i].uuid, uuid) == 0) {
            if (is_lost(&s->devices[i], monotonic_now() - s->epoch_ns))
                return NVML_ERROR_GPU_IS_LOST;
            *device = &s->devices[i];
            return NVML_SUCCESS;
        }
    return NVML_ERROR_NOT_FOUND;
}

/* ------------------------------------------------------------------ identity */

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    OPEN_DEVICE(device, index != NULL);
    *index = d->index;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    OPEN_DEVICE(device, name != NULL);
    return copy_string(name, length, d->name);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    OPEN_DEVICE(device, uuid != NULL);
    return copy_string(uuid, length, d->uuid);
}

EXPORT nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device,
                                              nvmlDeviceArchitecture_t *arch)
{
    OPEN_DEVICE(device, arch != NULL);
    *arch = d->arch;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major,
                                                       int *minor)
{
    OPEN_DEVICE(device, major != NULL && minor != NULL);
    *major = d->cc_major;
    *minor = d->cc_minor;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ power and energy */

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                        unsigned long long *energy)
{
    OPEN_DEVICE(device, energy != NULL);
    if (!has_energy(d))
        return NVML_ERROR_NOT_SUPPORTED;
    *energy = counter_mj(d, t);
    return NVML_SUCCESS;
}

/* nvml.h: the 1 s average on Ampere (except GA100) and newer, instantaneous before. */
EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    OPEN_DEVICE(device, power != NULL);
    *power = has_average(d) ? average_mw(d, t) : instant_mw(d, t);
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit)
{
    OPEN_DEVICE(device, limit != NULL);
    *limit = (unsigned int)d->limit_mw;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit)
{
    return nvmlDeviceGetPowerManagementLimit(device, limit);
}

static void fill_field(const struct nvmlDevice_st *d, long long t, nvmlFieldValue_t *v)
{
    v->value.ullVal = 0;
    v->nvmlReturn = NVML_SUCCESS;
    switch (v->fieldId) {
    case NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
    case NVML_FI_DEV_ENERGY:
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        if (!has_energy(d) || (v->fieldId == NVML_FI_DEV_ENERGY && v->scopeId != 0))
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        else
            v->value.ullVal = counter_mj(d, t);
        return;
    case NVML_FI_DEV_POWER_AVERAGE:
    case NVML_FI_DEV_POWER_INSTANT:
    case NVML_FI_DEV_POWER_CURRENT_LIMIT:
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
        /* Scope 0 (GPU) only: the module scope needs a Grace CPU. */
        if (v->scopeId != 0 || (v->fieldId == NVML_FI_DEV_POWER_AVERAGE && !has_average(d)))
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        else if (v->fieldId == NVML_FI_DEV_POWER_AVERAGE)
            v->value.uiVal = average_mw(d, t);
        else if (v->fieldId == NVML_FI_DEV_POWER_INSTANT)
            v->value.uiVal = instant_mw(d, t);
        else
            v->value.uiVal = (unsigned int)d->limit_mw;
        return;
    default:
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
        v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        return;
    }
}

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount,
                                             nvmlFieldValue_t *values)
{
    OPEN_DEVICE(device, values != NULL && valuesCount >= 0);
    long long now_us = realtime_now_us(s);
    for (int i = 0; i < valuesCount; i++) {
        values[i].timestamp = now_us;
        values[i].latencyUsec = 0;
        fill_field(d, t, &values[i]);
    }
    return NVML_SUCCESS;
}

/* Power sample buffer: one sample per instant-power publish, the newest samples_depth
 * publishes at or before t. Samples are written oldest first; when the caller's buffer is
 * smaller than the number available, the oldest ones are returned so that a poll loop
 * resuming from the newest timestamp it got loses nothing. */
EXPORT nvmlReturn_t nvmlDeviceGetSamples(nvmlDevice_t device, nvmlSamplingType_t type,
                                         unsigned long long lastSeenTimeStamp,
                                         nvmlValueType_t *sampleValType,
                                         unsigned int *sampleCount, nvmlSample_t *samples)
{
    OPEN_DEVICE(device, sampleValType != NULL && sampleCount != NULL &&
                            (samples == NULL || *sampleCount != 0));
    if (type != NVML_TOTAL_POWER_SAMPLES)
        return NVML_ERROR_NOT_SUPPORTED;
    if (d->samples_depth == 0)
        return NVML_ERROR_NOT_FOUND;
    long long period = d->instant_period_ns;
    long long first = last_publish(d, t) - (long long)(d->samples_depth - 1) * period;
    /* Timestamps grow with the publish index: find the first one newer than lastSeen. */
    unsigned int lo = 0, hi = d->samples_depth;
    while (lo < hi) {
        unsigned int mid = lo + (hi - lo) / 2;
        if (sample_timestamp_us(s, d, first + (long long)mid * period) > lastSeenTimeStamp)
            hi = mid;
        else
            lo = mid + 1;
    }
    unsigned int available = d->samples_depth - lo;
    if (available == 0)
        return NVML_ERROR_NOT_FOUND;
    *sampleValType = NVML_VALUE_TYPE_UNSIGNED_INT;
    if (samples == NULL) {
        *sampleCount = available;
        return NVML_SUCCESS;
    }
    unsigned int n = *sampleCount < available ? *sampleCount : available;
    for (unsigned int i = 0; i < n; i++) {
        long long publish = first + (long long)(lo + i) * period;
        samples[i].timeStamp = sample_timestamp_us(s, d, publish);
        samples[i].sampleValue.ullVal = 0;
        samples[i].sampleValue.uiVal = boxcar_mw(d, publish, d->instant_window_ns);
    }
    *sampleCount = n;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ utilization, memory */

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device,
                                                  nvmlUtilization_t *utilization)
{
    OPEN_DEVICE(device, utilization != NULL);
    long long above = power_mw_at(d, t) - d->idle_mw;
    long long pct = above <= 0 ? 0 : 100 * above / (d->limit_mw - d->idle_mw);
    if (pct > 100)
        pct = 100;
    utilization->gpu = (unsigned int)pct;
    utilization->memory = (unsigned int)pct / 2;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    OPEN_DEVICE(device, memory != NULL);
    /* v1 "used" is reserved + allocated. */
    unsigned long long used = d->memory_reserved_bytes + process_memory_bytes(d, t);
    memory->total = d->memory_total_bytes;
    memory->used = used;
    memory->free = used < memory->total ? memory->total - used : 0;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    OPEN_DEVICE(device, memory != NULL);
    if (memory->version != NVML_MEMORY_V2_VERSION)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long used = process_memory_bytes(d, t);
    unsigned long long taken = used + d->memory_reserved_bytes;
    memory->total = d->memory_total_bytes;
    memory->reserved = d->memory_reserved_bytes;
    memory->used = used;
    memory->free = taken < memory->total ? memory->total - taken : 0;
    return NVML_SUCCESS;
}

/* ------------------------------------------------------------------ processes */

/* Protocol of nvml.h: *infoCount smaller than the number running -> INSUFFICIENT_SIZE with
 * the number needed; nothing running -> SUCCESS with 0 (infos may be NULL). */
static nvmlReturn_t running_processes(nvmlDevice_t device, unsigned int *infoCount, void *infos,
                                      int v1_layout)
{
    OPEN_DEVICE(device, infoCount != NULL);
    unsigned int n = 0;
    for (size_t i = 0; i < d->nprocesses; i++)
        n += (unsigned int)process_alive(&d->processes[i], t);
    if (*infoCount < n) {
        *infoCount = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (n > 0 && infos == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int k = 0;
    for (size_t i = 0; i < d->nprocesses; i++) {
        const struct process *p = &d->processes[i];
        if (!process_alive(p, t))
            continue;
        if (v1_layout) {
            nvmlProcessInfo_v1_t *out = (nvmlProcessInfo_v1_t *)infos + k++;
            out->pid = p->pid;
            out->usedGpuMemory = p->used_bytes;
        } else {
            nvmlProcessInfo_t *out = (nvmlProcessInfo_t *)infos + k++;
            out->pid = p->pid;
            out->usedGpuMemory = p->used_bytes;
            out->gpuInstanceId = NVML_NO_MIG_ID;
            out->computeInstanceId = NVML_NO_MIG_ID;
        }
    }
    *infoCount = n;
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos)
{
    return running_processes(device, infoCount, infos, 0);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos)
{
    return running_processes(device, infoCount, infos, 0);
}

/* The unversioned symbol keeps the 16-byte nvmlProcessInfo_v1_t layout for binaries built
 * against old headers; code compiled against a current nvml.h is mapped to _v3. */
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device,
                                                         unsigned int *infoCount,
                                                         nvmlProcessInfo_v1_t *infos)
{
    return running_processes(device, infoCount, infos, 1);
}
