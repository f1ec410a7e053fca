// stdio_lock: a thread locks stdout (flockfile) and then blocks for ever in read() on a
// pipe nobody writes; a second thread calls printf and waits for stdout's lock, one of
// glibc's internal locks (`_IO_lock_t`), in `__lll_lock_wait_private`: a lock wait with
// no owner tid beside the futex word. Main sleeps in pause().
//
// Output goes through dprintf (its own buffer, not stdout's lock): "pid <pid>",
// "lock <addr>" (stdout's lock), "holder <tid>", "waiter <tid>", then "ready".
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_barrier_t held;
static int pipe_fds[2];
static volatile pid_t holder_tid, waiter_tid;

static void *holder(void *arg) {
    (void)arg;
    holder_tid = (pid_t)syscall(SYS_gettid);
    flockfile(stdout);
    pthread_barrier_wait(&held);
    char c;
    (void)!read(pipe_fds[0], &c, 1); /* never returns: nobody writes */
    funlockfile(stdout);
    return NULL;
}

static void *waiter(void *arg) {
    (void)arg;
    waiter_tid = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&held);
    printf("waiter writes\n"); /* the waiter waits */
    return NULL;
}

int main(void) {
    if (pipe(pipe_fds)) return 1;
    dprintf(1, "pid %d\nlock %p\n", (int)getpid(), (void *)stdout->_lock);
    pthread_barrier_init(&held, NULL, 3);
    pthread_t h, w;
    if (pthread_create(&h, NULL, holder, NULL) || pthread_create(&w, NULL, waiter, NULL)) return 1;
    pthread_setname_np(h, "holder");
    pthread_setname_np(w, "waiter");
    pthread_barrier_wait(&held);
    dprintf(1, "holder %d\nwaiter %d\nready\n", (int)holder_tid, (int)waiter_tid);
    for (;;) pause();
}
