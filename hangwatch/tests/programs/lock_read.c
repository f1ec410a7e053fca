// lock_read: a thread takes a mutex and then blocks forever in read() on a pipe nobody
// writes; a second thread blocks on that mutex. The second is in a lock wait whose owner
// is in read().
//
// stdout: "pid <pid>", then "holder <tid>", "waiter <tid>" and "ready" once the holder
// has the mutex and the waiter is about to lock it.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t held;
static int pipe_fds[2];
static volatile pid_t holder_tid, waiter_tid;

static void *holder(void *arg) {
    (void)arg;
    holder_tid = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&lock);
    pthread_barrier_wait(&held);
    char c;
    (void)!read(pipe_fds[0], &c, 1); // never returns: nobody writes
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *waiter(void *arg) {
    (void)arg;
    waiter_tid = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&held);
    pthread_mutex_lock(&lock); // never returns
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    if (pipe(pipe_fds)) {
        perror("pipe");
        return 1;
    }
    pthread_barrier_init(&held, NULL, 3);
    pthread_t h, w;
    if (pthread_create(&h, NULL, holder, NULL)) return 1;
    pthread_setname_np(h, "holder");
    // The barrier opens once the holder has the lock; then the waiter takes it.
    if (pthread_create(&w, NULL, waiter, NULL)) return 1;
    pthread_setname_np(w, "waiter");
    pthread_barrier_wait(&held);
    printf("holder %d\nwaiter %d\nready\n", (int)holder_tid, (int)waiter_tid);
    for (;;) pause();
}
