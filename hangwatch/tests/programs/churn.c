// churn: generations of short-lived threads, each blocked ~1.5 s in a timed condvar
// wait, then exiting; the next generation's thread is steered onto the same tid by
// writing tid-1 to /proc/sys/kernel/ns_last_pid (needs root), so a watcher sees a tid
// reused by a new thread right after the old one exited. Threads that miss the wanted
// tid exit at once (never blocking) and the generation is tried again, up to 200 times.
//
// stdout: "pid <pid>", then waits for a line on stdin; one "gen <n> tid <tid>" per
// generation (printed as the thread starts), "done" before exiting 0.
// Usage: churn [generations] [block_ms]
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long block_ms = 1500;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t tid_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tid_cv = PTHREAD_COND_INITIALIZER;
static pid_t current_tid;

// The tid the next thread should get (0: any), and whether a thread that did not get
// it should exit at once so that main can try again.
static pid_t wanted_tid;
static int retry_allowed;

static void *blocker(void *arg) {
    (void)arg;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&tid_lock);
    current_tid = tid;
    pthread_cond_signal(&tid_cv);
    pthread_mutex_unlock(&tid_lock);
    if (wanted_tid && tid != wanted_tid && retry_allowed) return NULL;

    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += block_ms / 1000;
    deadline.tv_nsec += (block_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&lock);
    int rc;
    do rc = pthread_cond_timedwait(&never, &lock, &deadline);
    while (rc != ETIMEDOUT);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void set_last_pid(pid_t last) {
    int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY);
    if (fd < 0) {
        fprintf(stderr, "open ns_last_pid: %s\n", strerror(errno));
        return;
    }
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%d", (int)last);
    if (write(fd, buf, (size_t)n) != n) fprintf(stderr, "write ns_last_pid: %s\n", strerror(errno));
    close(fd);
}

int main(int argc, char **argv) {
    int generations = argc > 1 ? atoi(argv[1]) : 6;
    if (argc > 2) block_ms = atol(argv[2]);
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;

    pid_t previous = 0;
    for (int gen = 0; gen < generations; gen++) {
        pid_t tid = 0;
        pthread_t t;
        // The joined thread's pid is released a little after the join returns
        // (CLONE_CHILD_CLEARTID fires before release_task, and the exiting thread can be
        // preempted before its pid is freed), so try a few times: a thread that did not
        // get the wanted tid exits at once without blocking.
        for (int attempt = 0; attempt < 200; attempt++) {
            wanted_tid = previous;
            retry_allowed = attempt < 199;
            if (previous > 1) set_last_pid(previous - 1);
            pthread_mutex_lock(&tid_lock);
            current_tid = 0;
            pthread_mutex_unlock(&tid_lock);
            if (pthread_create(&t, NULL, blocker, NULL)) {
                perror("pthread_create");
                return 1;
            }
            pthread_mutex_lock(&tid_lock);
            while (current_tid == 0) pthread_cond_wait(&tid_cv, &tid_lock);
            tid = current_tid;
            pthread_mutex_unlock(&tid_lock);
            if (!wanted_tid || tid == wanted_tid || !retry_allowed) break;
            pthread_join(t, NULL);
            usleep(1000);
        }
        printf("gen %d tid %d\n", gen, (int)tid);
        pthread_join(t, NULL);
        previous = tid;
    }
    printf("done\n");
    return 0;
}
