// A process asked to exit before hangwatch started, in the ways that leave a trace (and
// one that does not), for kernel_before_start.rs. Usage: exit_before_start MODE
//   siginfo   SIGTERM's handler (SA_SIGINFO) saves state under a lock a worker holds
//             while it blocks in read(): stuck in the handler, forever
//   plain     the same with a plain handler (no siginfo in its signal frame)
//   pending   SIGTERM blocked in every thread and nobody takes it: pending, forever
//   returned  the handler sets a flag and returns, and the program goes on: healthy,
//             indistinguishable afterwards from a program never signalled (a control)
// The worker blocks SIGTERM (so that the main thread takes it): `plain` never sent a
// signal is a control too, a thread blocking a handled exit signal and not in a handler.
// Protocol on stdout: "pid N", "worker TID", "ready"; after a SIGTERM, "handling" from a
// stuck handler (write(2): async-signal-safe), "handled" from the returned one.
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER;
static int never_written[2];
static volatile pid_t worker_tid;
static volatile sig_atomic_t asked;

static void say(const char *line) {
    if (write(1, line, strlen(line)) < 0) _exit(3);
}

__attribute__((noinline)) static void save_state(void) {
    say("handling\n");
    pthread_mutex_lock(&state_lock);  // the worker holds it: never returns
    pthread_mutex_unlock(&state_lock);
}

static void on_term_info(int sig, siginfo_t *info, void *context) {
    (void)sig, (void)info, (void)context;
    save_state();
}

static void on_term_plain(int sig) {
    (void)sig;
    save_state();
}

static void on_term_flag(int sig) {
    (void)sig;
    asked = 1;
    say("handled\n");
}

__attribute__((noinline)) static void wait_for_input(void) {
    char c;
    if (read(never_written[0], &c, 1) < 0) perror("read");
}

static void *worker(void *arg) {
    (void)arg;
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &term, NULL);
    worker_tid = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&state_lock);
    wait_for_input();  // holds state_lock for as long as this blocks: forever
    pthread_mutex_unlock(&state_lock);
    return NULL;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    struct sigaction action;
    memset(&action, 0, sizeof action);
    if (strcmp(mode, "siginfo") == 0) {
        action.sa_sigaction = on_term_info;
        action.sa_flags = SA_SIGINFO;
    } else if (strcmp(mode, "plain") == 0) {
        action.sa_handler = on_term_plain;
    } else if (strcmp(mode, "returned") == 0) {
        action.sa_handler = on_term_flag;
    } else if (strcmp(mode, "pending") == 0) {
        sigset_t term;
        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &term, NULL);  // inherited by the worker
        action.sa_handler = SIG_DFL;
    } else {
        fprintf(stderr, "usage: exit_before_start siginfo|plain|pending|returned\n");
        return 2;
    }
    sigaction(SIGTERM, &action, NULL);
    if (pipe(never_written) != 0) return 1;
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    while (worker_tid == 0) usleep(1000);
    usleep(20000);  // the worker is in read() holding the lock
    printf("pid %d\nworker %d\nready\n", getpid(), worker_tid);
    fflush(stdout);
    for (;;) pause();  // SIGTERM, if any, arrives here (the worker blocks it or not)
}
