// woken_spinner: a thread waits on a mutex long enough to become a lock_wait candidate,
// is let go before the threshold, then runs on CPU without blocking for longer than the
// threshold, then waits on a second mutex for good.
//
// The scheduler probe records the switch-ins of the threads the daemon follows only
// (docs/design.md, "The per-switch cost"): the first wait must end with the switch-in
// seen, not as a lock_wait (it runs, it does not wait), and the second must be reported,
// timed from its own start.
//
// argv: first wait in ms, spin in ms. stdout: "worker <tid>", then "released", "spun".
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t first = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t second = PTHREAD_MUTEX_INITIALIZER;
static long spin_ms;

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void *worker(void *arg) {
    (void)arg;
    printf("worker %d\n", (int)syscall(SYS_gettid));
    pthread_mutex_lock(&first); // held by main until it lets go
    pthread_mutex_unlock(&first);
    long until = now_ms() + spin_ms;
    volatile unsigned long n = 0;
    while (now_ms() < until) {
        n++; // on CPU the whole time, no syscall that blocks
    }
    printf("spun\n");
    pthread_mutex_lock(&second); // held by main for good
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: woken_spinner FIRST_WAIT_MS SPIN_MS\n");
        return 2;
    }
    long wait_ms = atol(argv[1]);
    spin_ms = atol(argv[2]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_mutex_lock(&first);
    pthread_mutex_lock(&second);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    usleep((useconds_t)wait_ms * 1000);
    pthread_mutex_unlock(&first);
    printf("released\n");
    // Holds `second` for good, blocked in read() (not a futex: the worker's wait is a
    // lock_wait naming this thread, not a whole-process deadlock).
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return 0;
}
