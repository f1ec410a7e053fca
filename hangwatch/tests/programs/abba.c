// abba: two worker threads deadlock on two pthread mutexes (lock order A->B vs B->A).
//
// Protocol on stdout (line-buffered, one fact per line):
//   pid <pid>                     at start; then waits for a line on stdin before deadlocking
//   mutex_a <address> / mutex_b <address>
//   tid_a <tid> / tid_b <tid>     the workers' kernel tids, once both hold their first lock
//   ready                         both workers are about to take their second lock
// Then main joins the workers forever (untimed futex wait).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_mutex_t mutex_a = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t mutex_b = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t barrier;
static volatile pid_t tid_a, tid_b;

static void *worker_a(void *arg) {
    (void)arg;
    tid_a = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&mutex_a);
    pthread_barrier_wait(&barrier);
    pthread_mutex_lock(&mutex_b); // never returns
    pthread_mutex_unlock(&mutex_b);
    pthread_mutex_unlock(&mutex_a);
    return NULL;
}

static void *worker_b(void *arg) {
    (void)arg;
    tid_b = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&mutex_b);
    pthread_barrier_wait(&barrier);
    pthread_mutex_lock(&mutex_a); // never returns
    pthread_mutex_unlock(&mutex_a);
    pthread_mutex_unlock(&mutex_b);
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;

    printf("mutex_a %p\nmutex_b %p\n", (void *)&mutex_a, (void *)&mutex_b);
    pthread_barrier_init(&barrier, NULL, 3);
    pthread_t a, b;
    if (pthread_create(&a, NULL, worker_a, NULL) || pthread_create(&b, NULL, worker_b, NULL)) {
        perror("pthread_create");
        return 1;
    }
    pthread_setname_np(a, "worker-a");
    pthread_setname_np(b, "worker-b");
    pthread_barrier_wait(&barrier);
    printf("tid_a %d\ntid_b %d\nready\n", (int)tid_a, (int)tid_b);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return 0;
}
