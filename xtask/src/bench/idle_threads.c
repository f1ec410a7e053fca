/* idle_threads N: starts N threads that block in pthread_cond_wait for ever, prints "ready",
 * then waits to be killed. `cargo xtask bench` runs it to measure the daemon's own cost with
 * many idle threads on the machine. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static int started;
static int go;

static void *idle(void *arg) {
    (void)arg;
    pthread_mutex_lock(&lock);
    started++;
    while (!go)
        pthread_cond_wait(&never, &lock);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 0;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    /* Small stacks: 10,000 threads must not need 80 GB of address space. */
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (long i = 0; i < n; i++) {
        pthread_t t;
        int err = pthread_create(&t, &attr, idle, NULL);
        if (err) {
            fprintf(stderr, "idle_threads: thread %ld: %s\n", i, strerror(err));
            return 1;
        }
    }
    for (;;) {
        pthread_mutex_lock(&lock);
        int all = started == n;
        pthread_mutex_unlock(&lock);
        if (all)
            break;
        usleep(1000);
    }
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
