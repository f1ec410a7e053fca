// states: one process whose threads each wait in a known way, for `hangwatch threads`.
//
// Protocol on stdout (line-buffered):
//   pid <pid>
//   thread <name> <tid>     once per thread below, after it started
//   ready                   every thread is (about to be) in its wait
// Then main blocks in read(stdin) until killed.
//
// Threads: "sleeper" in clock_nanosleep (S), "locker" in an untimed futex wait on a
// mutex main holds (S), "reader" in read() on a pipe nobody writes (S), "spinner" on CPU
// (R), "vforker" waiting for a vfork child (D: the vfork wait is TASK_KILLABLE). The vfork
// child dies with its parent (PR_SET_PDEATHSIG) or after two minutes.
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t started;
static int pipe_fds[2];
static volatile unsigned long spins;

static void announce(const char *name) {
    pthread_setname_np(pthread_self(), name);
    printf("thread %s %ld\n", name, (long)syscall(SYS_gettid));
    pthread_barrier_wait(&started);
}

static void *sleeper(void *arg) {
    (void)arg;
    announce("sleeper");
    struct timespec t = {.tv_sec = 100000};
    nanosleep(&t, NULL);
    return NULL;
}

static void *locker(void *arg) {
    (void)arg;
    announce("locker");
    pthread_mutex_lock(&held); // main never unlocks
    return NULL;
}

static void *reader(void *arg) {
    (void)arg;
    announce("reader");
    char c;
    if (read(pipe_fds[0], &c, 1) < 0) perror("read");
    return NULL;
}

static void *spinner(void *arg) {
    (void)arg;
    announce("spinner");
    for (;;) spins++;
    return NULL;
}

static void *vforker(void *arg) {
    (void)arg;
    announce("vforker");
    pid_t child = vfork();
    if (child == 0) {
        // Only raw syscalls in the vfork child: it runs on the parent's stack.
        syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        struct timespec t = {.tv_sec = 120};
        syscall(SYS_nanosleep, &t, NULL);
        syscall(SYS_exit, 0);
    }
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", getpid());
    if (pipe(pipe_fds) != 0) return 1;
    pthread_mutex_lock(&held);
    void *(*bodies[])(void *) = {sleeper, locker, reader, spinner, vforker};
    int n = sizeof bodies / sizeof bodies[0];
    pthread_barrier_init(&started, NULL, n + 1);
    pthread_t threads[5];
    for (int i = 0; i < n; i++) {
        if (pthread_create(&threads[i], NULL, bodies[i], NULL) != 0) return 1;
    }
    pthread_barrier_wait(&started);
    printf("ready\n");
    char line[64];
    while (read(0, line, sizeof line) > 0) {
    }
    return 0;
}
