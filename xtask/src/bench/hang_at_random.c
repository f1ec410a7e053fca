// Threads that hang at random moments, for the detection-latency benchmark: each sleeps a
// random 0-3 s, prints "blocked TID MONOTONIC_NS" and blocks forever on a mutex main holds,
// or, given a directory on a frozen filesystem (`hang_at_random N DIR`), in uninterruptible
// sleep writing a file there (until the filesystem is thawed).
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t out = PTHREAD_MUTEX_INITIALIZER;
static const char *frozen_dir;

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
    if (frozen_dir) {
        // Creating a file on a frozen filesystem waits in D until it is thawed.
        char path[4096];
        snprintf(path, sizeof path, "%s/hang-%d", frozen_dir, gettid());
        int fd = open(path, O_WRONLY | O_CREAT, 0600);
        if (fd >= 0) {
            if (write(fd, "x", 1) < 0) perror("write");
            close(fd);
        }
        return NULL;
    }
    pthread_mutex_lock(&held); // never returns: main holds it
    return NULL;
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 50;
    frozen_dir = argc > 2 ? argv[2] : NULL;
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
