// pi_abba [join|pause]: two worker threads deadlock on two priority-inheritance mutexes
// (PTHREAD_PRIO_INHERIT, lock order A->B vs B->A). The kernel sees the cycle: the second
// FUTEX_LOCK_PI fails with EDEADLK, and glibc's pthread_mutex_lock then parks that thread
// for ever in a futex wait on a word of its own stack ("delay the thread indefinitely"),
// while the other worker stays in FUTEX_LOCK_PI on the parked thread's mutex.
// Main then joins the workers (`join`, the default) or sleeps in pause() (`pause`: the
// process as a whole can still be woken by a signal, so only the cycle tells).
//
// stdout: "pid <pid>", "mutex_a <addr>", "mutex_b <addr>", "tid_a <tid>", "tid_b <tid>",
// then "ready" once both hold their first lock and go for the second.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_mutex_t mutex_a, mutex_b;
static pthread_barrier_t barrier;
static volatile pid_t tid_a, tid_b;

static void *worker_a(void *arg) {
    (void)arg;
    tid_a = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&mutex_a);
    pthread_barrier_wait(&barrier);
    pthread_mutex_lock(&mutex_b); /* worker_a waits */
    pthread_mutex_unlock(&mutex_b);
    pthread_mutex_unlock(&mutex_a);
    return NULL;
}

static void *worker_b(void *arg) {
    (void)arg;
    tid_b = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&mutex_b);
    pthread_barrier_wait(&barrier);
    usleep(100 * 1000); /* a blocks first: b's lock closes the cycle and gets EDEADLK */
    pthread_mutex_lock(&mutex_a); /* worker_b parks */
    pthread_mutex_unlock(&mutex_a);
    pthread_mutex_unlock(&mutex_b);
    return NULL;
}

int main(int argc, char **argv) {
    int join = argc < 2 || strcmp(argv[1], "pause") != 0;
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    pthread_mutexattr_t attr;
    pthread_mutexattr_init(&attr);
    if (pthread_mutexattr_setprotocol(&attr, PTHREAD_PRIO_INHERIT) != 0) {
        perror("PTHREAD_PRIO_INHERIT");
        return 1;
    }
    pthread_mutex_init(&mutex_a, &attr);
    pthread_mutex_init(&mutex_b, &attr);
    printf("mutex_a %p\nmutex_b %p\n", (void *)&mutex_a, (void *)&mutex_b);
    pthread_barrier_init(&barrier, NULL, 3);
    pthread_t a, b;
    if (pthread_create(&a, NULL, worker_a, NULL) || pthread_create(&b, NULL, worker_b, NULL)) {
        perror("pthread_create");
        return 1;
    }
    pthread_setname_np(a, "pi-worker-a");
    pthread_setname_np(b, "pi-worker-b");
    pthread_barrier_wait(&barrier);
    printf("tid_a %d\ntid_b %d\nready\n", (int)tid_a, (int)tid_b);
    if (join) {
        pthread_join(a, NULL);
        pthread_join(b, NULL);
    } else {
        for (;;) pause();
    }
    return 0;
}
