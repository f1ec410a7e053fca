// user_stack: two worker threads deadlock (ABBA on two pthread mutexes) three calls deep,
// main -> worker (thread function) -> take_locks -> pthread_mutex_lock, for the user stack
// tests. Built with -O2 -fomit-frame-pointer -g: the unwinder needs DWARF CFI to get
// through it. The test reads this file to find the lines marked `@take_locks_call` and
// `@worker_call`: the return addresses of the blocked threads point at them.
//
// Protocol on stdout (line-buffered, one fact per line):
//   pid <pid>                   at start; then waits for a line on stdin before deadlocking
//   tid_0 <tid> / tid_1 <tid>   the workers' kernel tids, once both hold their first lock
//   ready                       both workers are about to take their second lock
// Then main joins the workers forever.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

pthread_mutex_t locks[2] = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER};
pthread_barrier_t barrier;
volatile pid_t tids[2];

// Not static, not inlined, not cloned: each keeps its own frame and its plain name.
__attribute__((noinline, noclone)) void take_locks(pthread_mutex_t *first,
                                                   pthread_mutex_t *second) {
    pthread_mutex_lock(first);
    pthread_barrier_wait(&barrier);
    pthread_mutex_lock(second); /* @take_locks_call */
    pthread_mutex_unlock(second);
    pthread_mutex_unlock(first);
}

__attribute__((noinline, noclone)) void *worker(void *arg) {
    long i = (long)arg;
    tids[i] = (pid_t)syscall(SYS_gettid);
    take_locks(&locks[i], &locks[1 - i]); /* @worker_call */
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;

    pthread_barrier_init(&barrier, NULL, 3);
    pthread_t threads[2];
    for (long i = 0; i < 2; i++) {
        if (pthread_create(&threads[i], NULL, worker, (void *)i)) {
            perror("pthread_create");
            return 1;
        }
    }
    pthread_barrier_wait(&barrier);
    printf("tid_0 %d\ntid_1 %d\nready\n", (int)tids[0], (int)tids[1]);
    pthread_join(threads[0], NULL);
    pthread_join(threads[1], NULL);
    return 0;
}
