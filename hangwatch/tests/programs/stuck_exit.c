// A daemon that cannot shut down (seeds 002, 003): its SIGTERM handler thread must take
// the state lock to save state, but a worker holds that lock while it waits forever for
// input on a pipe nobody writes. Protocol on stdout: {"pid": N, "worker": TID}, "ready".
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int never_written[2];
static volatile pid_t worker_tid;

__attribute__((noinline)) static void wait_for_input(void) {
    char c;
    // Holds state_lock for as long as this blocks: forever.
    if (read(never_written[0], &c, 1) < 0) perror("read");
}

static void *worker(void *arg) {
    (void)arg;
    worker_tid = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&state_lock);
    wait_for_input();
    pthread_mutex_unlock(&state_lock);
    return NULL;
}

__attribute__((noinline)) static void save_state_and_exit(void) {
    pthread_mutex_lock(&state_lock);  // never returns: the worker holds it
    exit(0);
}

int main(void) {
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    // Blocked in every thread: the main thread takes it with sigwait, as daemons do.
    pthread_sigmask(SIG_BLOCK, &term, NULL);
    if (pipe(never_written) != 0) return 1;
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    while (worker_tid == 0) usleep(1000);
    usleep(20000);  // the worker is in read() holding the lock
    printf("{\"pid\": %d, \"worker\": %d}\nready\n", getpid(), worker_tid);
    fflush(stdout);
    int sig;
    sigwait(&term, &sig);
    save_state_and_exit();
    return 0;
}
