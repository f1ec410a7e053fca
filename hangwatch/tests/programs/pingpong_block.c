// pingpong_block: two threads pass a byte back and forth over two pipes (every pass a
// blocking switch-out of each), then the ponger blocks for good on a mutex that main holds
// while main waits on stdin: a lock_wait with defaults.
//
// The scheduler probe records the switch-outs of a thread that owns a switch slot in the
// slot alone (docs/design.md, "The per-switch cost"): the ping-pong's switch-outs must
// mostly go there, and the ponger's last one, the block, must reach the report, timed
// from the block and not from an older switch-out.
//
// argv: round trips. stdin: "go" starts them. stdout: "ponger <tid>", "pingpong done",
// "blocked".
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ping[2], pong[2];
static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static long rounds;

static void *ponger(void *arg) {
    (void)arg;
    printf("ponger %ld\n", (long)syscall(SYS_gettid));
    fflush(stdout);
    char c;
    for (long i = 0; i < rounds; i++) {
        if (read(ping[0], &c, 1) != 1 || write(pong[1], &c, 1) != 1) {
            exit(2);
        }
    }
    // Printed after the last pass: main prints "pingpong done" once it has read it.
    if (read(ping[0], &c, 1) != 1) {
        exit(2);
    }
    printf("blocked\n");
    fflush(stdout);
    pthread_mutex_lock(&held);
    return NULL;
}

int main(int argc, char **argv) {
    rounds = argc > 1 ? atol(argv[1]) : 100000;
    if (pipe(ping) || pipe(pong)) {
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, ponger, NULL)) {
        return 1;
    }
    char line[16];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, "go", 2) != 0) {
        return 1;
    }
    char c = 'x';
    for (long i = 0; i < rounds; i++) {
        if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1) {
            return 2;
        }
    }
    pthread_mutex_lock(&held);
    printf("pingpong done\n");
    fflush(stdout);
    if (write(ping[1], &c, 1) != 1) {
        return 2;
    }
    // Holds the mutex until stdin says otherwise (never, in the test).
    fgets(line, sizeof line, stdin);
    return 0;
}
