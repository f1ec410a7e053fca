// idle_pool [WORKERS]: a healthy idle worker pool. WORKERS threads (4 unless given,
// at most 64) wait on a condition variable nobody signals (untimed pthread_cond_wait),
// main sleeps in pause().
//
// stdout: "pid <pid>", one "tid <tid>" per worker, then "ready" once all workers wait.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <stdlib.h>

#define MAX_WORKERS 64

static int workers = 4;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t waiting_cv = PTHREAD_COND_INITIALIZER;
static int waiting;
static int has_work;

static void *worker(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    printf("tid %d\n", (int)syscall(SYS_gettid));
    waiting++;
    pthread_cond_signal(&waiting_cv);
    while (!has_work) pthread_cond_wait(&work, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) workers = atoi(argv[1]);
    if (workers < 1 || workers > MAX_WORKERS) return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    pthread_t threads[MAX_WORKERS];
    for (int i = 0; i < workers; i++) {
        if (pthread_create(&threads[i], NULL, worker, NULL)) {
            perror("pthread_create");
            return 1;
        }
    }
    pthread_mutex_lock(&lock);
    while (waiting < workers) pthread_cond_wait(&waiting_cv, &lock);
    pthread_mutex_unlock(&lock);
    printf("ready\n");
    for (;;) pause();
}
