// A mass hang: N threads (argv[2]) each write to their own file on the directory argv[1]
// (a filesystem the test freezes), so all of them sleep in D state at once. Prints
// "pid N", starts the threads once it reads "go" on stdin, prints "started" and joins.
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static const char *dir;

static void *writer(void *arg) {
    char path[4096];
    snprintf(path, sizeof path, "%s/f%ld", dir, (long)arg);
    int fd = open(path, O_WRONLY | O_CREAT, 0644);
    if (fd >= 0) {
        if (write(fd, "x", 1) < 0) perror("write"); /* blocks in D on a frozen filesystem */
        close(fd);
    }
    pause();
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    dir = argv[1];
    long n = atol(argv[2]);
    printf("pid %d\n", getpid());
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, writer, (void *)i)) { perror("pthread_create"); return 1; }
    }
    printf("started\n");
    fflush(stdout);
    pause();
    return 0;
}
