// sem_signal: a healthy daemon idiom. Main waits in sem_wait (an untimed private futex
// wait) for its SIGTERM handler's sem_post (async-signal-safe), with a pool of workers
// idle on a condvar: every thread is in an untimed private futex wait, yet a signal from
// outside wakes the process, which then exits 0 printing "woken".
//
// stdout: "pid <pid>", then "ready" once the workers wait.
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define WORKERS 4

static sem_t stop;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static int waiting;

static void on_term(int sig) {
    (void)sig;
    sem_post(&stop);
}

static void *worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    waiting++;
    for (;;) pthread_cond_wait(&work, &lock);
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    sem_init(&stop, 0, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    pthread_t t;
    for (int i = 0; i < WORKERS; i++)
        if (pthread_create(&t, NULL, worker, NULL)) return 1;
    for (;;) {
        pthread_mutex_lock(&lock);
        int all = waiting == WORKERS;
        pthread_mutex_unlock(&lock);
        if (all) break;
        usleep(1000);
    }
    printf("ready\n");
    while (sem_wait(&stop) != 0) {
    }
    printf("woken\n");
    return 0;
}
