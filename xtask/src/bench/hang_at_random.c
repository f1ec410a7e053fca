// Threads that hang at random moments, for the detection-latency benchmark: each sleeps a
// random 0-3 s, prints "blocked TID MONOTONIC_NS" and blocks forever on a mutex main holds.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t out = PTHREAD_MUTEX_INITIALIZER;

static void *hang(void *arg) {
    unsigned seed = (unsigned)(size_t)arg;
    struct timespec delay = {0, 0};
    long ms = rand_r(&seed) % 3000;
    delay.tv_sec = ms / 1000;
    delay.tv_nsec = (ms % 1000) * 1000000L;
    nanosleep(&delay, NULL);
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    pthread_mutex_lock(&out);
    printf("blocked %d %lld\n", gettid(), (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    fflush(stdout);
    pthread_mutex_unlock(&out);
    pthread_mutex_lock(&held); // never returns: main holds it
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 50;
    pthread_mutex_lock(&held);
    // Wait for the go-ahead so that every hang starts after the daemon attached.
    char go[8];
    printf("ready\n");
    fflush(stdout);
    if (!fgets(go, sizeof go, stdin)) return 1;
    for (int i = 0; i < n; i++) {
        pthread_t t;
        pthread_create(&t, NULL, hang, (void *)(size_t)(i * 7919 + 17));
    }
    pause();
    return 0;
}
