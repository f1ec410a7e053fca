// churn_storm: a storm of short-lived threads (each exits at once, detached)
// whose tids are steered into a small range by writing RANGE_START-1 to the global
// /proc/sys/kernel/ns_last_pid before each creation (needs root), so every tid of the range
// is reused many times a second; among them, a few real blockers: threads that wait
// BLOCK_MS in a timed futex wait (pthread_cond_timedwait), then exit, their tid going
// back to the storm at once.
//
// stdout (line-buffered): "pid <pid>" and "range <first> <count>", then waits for a line
// on stdin. Then, per blocker, "blocker <tid> start <ms>" just before it blocks and
// "blocker <tid> end <ms> <queued ms>" once it woke (CLOCK_REALTIME milliseconds; queued:
// about how long it waited for a CPU between the start and the wait itself, from its
// schedstat's run delay less what it waited after the deadline; a thread preempted for
// long there blocks that much less). At the end, once
// SECONDS have passed and every blocker has ended: "created <threads> in <ms> ms",
// "in_range <threads whose tid was in the range> distinct <tids of the range used>",
// "done", and exit 0. No thread but the blockers is ever off-CPU for long: the spawners
// (main among them) never stop creating threads until the end.
// Usage: churn_storm SECONDS BLOCKERS BLOCK_MS RANGE SPAWNERS RATE (threads/s at most)
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_RANGE 4096

static long block_ms;
static int range_first, range_count;
static int last_pid_fd;
static char steer[32];
static size_t steer_len;
static atomic_long created, in_range, blockers_started, blockers_ended;
// Storm threads alive: the spawners wait (on CPU) while MAX_LIVE exist.
static atomic_int live;
#define MAX_LIVE 32
static atomic_int stop;
static atomic_int used[MAX_RANGE];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;

static long long now_ms(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *storm(void *arg) {
    (void)arg;
    int tid = (int)syscall(SYS_gettid);
    if (tid >= range_first && tid < range_first + range_count) {
        atomic_fetch_add_explicit(&in_range, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&used[tid - range_first], 1, memory_order_relaxed);
    }
    atomic_fetch_sub_explicit(&live, 1, memory_order_relaxed);
    return NULL;
}

// This thread's time waiting on a run queue so far (schedstat's second field), in ms;
// 0 where the kernel does not keep it.
static long long run_delay_ms(void) {
    FILE *f = fopen("/proc/thread-self/schedstat", "r");
    unsigned long long on_cpu = 0, delay = 0;
    if (f != NULL) {
        if (fscanf(f, "%llu %llu", &on_cpu, &delay) != 2) delay = 0;
        fclose(f);
    }
    return (long long)(delay / 1000000ULL);
}

static void *blocker(void *arg) {
    (void)arg;
    int tid = (int)syscall(SYS_gettid);
    long long delay_before = run_delay_ms();
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += block_ms / 1000;
    deadline.tv_nsec += (block_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    long long deadline_ms = (long long)deadline.tv_sec * 1000 + deadline.tv_nsec / 1000000;
    printf("blocker %d start %lld\n", tid, now_ms(CLOCK_REALTIME));
    pthread_mutex_lock(&lock);
    int rc;
    do rc = pthread_cond_timedwait(&never, &lock, &deadline);
    while (rc != ETIMEDOUT);
    pthread_mutex_unlock(&lock);
    long long end = now_ms(CLOCK_REALTIME);
    long long late = end > deadline_ms ? end - deadline_ms : 0;
    long long queued = run_delay_ms() - delay_before - late;
    printf("blocker %d end %lld %lld\n", tid, end, queued > 0 ? queued : 0);
    atomic_fetch_add(&blockers_ended, 1);
    return NULL;
}

// The next thread gets the lowest free tid from the start of the range on.
static void steer_next(void) {
    if (pwrite(last_pid_fd, steer, steer_len, 0) < 0) {
        fprintf(stderr, "churn_storm: write ns_last_pid: %s\n", strerror(errno));
        exit(1);
    }
}

static pthread_attr_t small;

static long rate;
static long long storm_started;

// One storm thread, detached (a join would put the spawner to sleep until it exits); none
// while the storm is ahead of RATE threads per second.
static void storm_one(void) {
    long long elapsed = now_ms(CLOCK_MONOTONIC) - storm_started;
    if (atomic_load_explicit(&created, memory_order_relaxed) > rate * elapsed / 1000) {
        usleep(100);
        return;
    }
    if (atomic_load_explicit(&live, memory_order_relaxed) >= MAX_LIVE) {
        sched_yield();
        return;
    }
    pthread_t t;
    steer_next();
    atomic_fetch_add_explicit(&live, 1, memory_order_relaxed);
    if (pthread_create(&t, &small, storm, NULL)) { // EAGAIN: try again
        atomic_fetch_sub_explicit(&live, 1, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&created, 1, memory_order_relaxed);
}

static void *spawn(void *arg) {
    (void)arg;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) storm_one();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: churn_storm SECONDS BLOCKERS BLOCK_MS RANGE SPAWNERS RATE\n");
        return 2;
    }
    long seconds = atol(argv[1]);
    int blockers = atoi(argv[2]);
    block_ms = atol(argv[3]);
    range_count = atoi(argv[4]);
    int spawners = atoi(argv[5]);
    rate = atol(argv[6]);
    if (range_count < 1 || range_count > MAX_RANGE || spawners < 1) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);

    last_pid_fd = open("/proc/sys/kernel/ns_last_pid", O_RDWR);
    FILE *pid_max_file = fopen("/proc/sys/kernel/pid_max", "r");
    char text[32] = {0};
    long pid_max = 32768;
    if (last_pid_fd < 0 || pread(last_pid_fd, text, sizeof text - 1, 0) <= 0 || !pid_max_file ||
        fscanf(pid_max_file, "%ld", &pid_max) != 1) {
        fprintf(stderr, "churn_storm: ns_last_pid or pid_max: %s\n", strerror(errno));
        return 1;
    }
    fclose(pid_max_file);
    // A range just ahead of the pids in use now (other processes may take some of it).
    range_first = atoi(text) + 1000;
    if (range_first + range_count >= pid_max) range_first = 1000;
    steer_len = (size_t)snprintf(steer, sizeof steer, "%d", range_first - 1);
    pthread_attr_init(&small);
    pthread_attr_setstacksize(&small, 64 * 1024);
    pthread_attr_setdetachstate(&small, PTHREAD_CREATE_DETACHED);

    printf("pid %d\nrange %d %d\n", (int)getpid(), range_first, range_count);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;

    long long started = now_ms(CLOCK_MONOTONIC);
    storm_started = started;
    pthread_t others[64];
    if (spawners > 64) spawners = 64;
    for (int i = 1; i < spawners; i++) pthread_create(&others[i], NULL, spawn, NULL);
    // Main spawns too, and starts the blockers on their schedule: one every
    // SECONDS/(BLOCKERS+1), from the storm's threads' tids.
    long long every = seconds * 1000 / (blockers + 1);
    while (atomic_load(&blockers_ended) < blockers ||
           now_ms(CLOCK_MONOTONIC) - started < seconds * 1000) {
        if (atomic_load(&blockers_started) < blockers &&
            now_ms(CLOCK_MONOTONIC) - started >= every * (atomic_load(&blockers_started) + 1)) {
            pthread_t t;
            steer_next();
            if (pthread_create(&t, &small, blocker, NULL) == 0) atomic_fetch_add(&blockers_started, 1);
            continue;
        }
        for (int i = 0; i < 64; i++) storm_one();
    }
    atomic_store(&stop, 1);
    for (int i = 1; i < spawners; i++) pthread_join(others[i], NULL);
    while (atomic_load(&live) > 0) sched_yield();
    long long took = now_ms(CLOCK_MONOTONIC) - started;
    int distinct = 0;
    for (int i = 0; i < range_count; i++) distinct += atomic_load(&used[i]) > 0;
    printf("created %ld in %lld ms\n", atomic_load(&created), took);
    printf("in_range %ld distinct %d\n", atomic_load(&in_range), distinct);
    printf("done\n");
    return 0;
}
