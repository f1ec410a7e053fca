// A crowd of spinning threads in a process that ignores SIGTERM: N threads (argv[1]) spin
// on CPU forever; SIGTERM is caught and ignored, so once it is sent the process is a
// `stuck_exit`, whose report must stay bounded (it samples at most a few threads).
// Prints "pid N" once every thread runs.
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile unsigned long spins;
static pthread_barrier_t start;

static void *spin(void *arg) {
    (void)arg;
    pthread_barrier_wait(&start); /* all created before any spins */
    for (;;) spins++;
    return NULL;
}

static void ignore(int sig) { (void)sig; }

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 500;
    signal(SIGTERM, ignore);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_barrier_init(&start, NULL, (unsigned)n + 1);
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, spin, NULL)) { perror("pthread_create"); return 1; }
    }
    printf("pid %d\n", getpid());
    fflush(stdout);
    pthread_barrier_wait(&start);
    for (;;) pause();
}
