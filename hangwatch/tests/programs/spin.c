// spin: a thread spinning on CPU in user code three calls deep, main -> outer_spin ->
// middle_spin -> inner_spin, for the on-CPU sampling tests (stack::on_cpu). Built with
// -O2 -fomit-frame-pointer -g: the unwinder needs DWARF CFI to get through it. The test
// reads this file to find the lines marked `@spin`, `@inner_call`, `@middle_call` and
// `@outer_call`.
//
// `spin` spins in the main thread. `spin thread` spins in a second thread while the main
// thread sleeps in nanosleep (a blocked thread, which no sample can catch).
//
// Protocol on stdout (line-buffered): `pid <pid>`, then `spinner <tid>` (the spinning
// thread), then `spinning`. Then it spins until killed.
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

// Never set: the loop is endless but the compiler cannot prove it, so the calls below stay
// calls with code after them (no tail calls, no noreturn inference folding frames away).
volatile int stop;
volatile unsigned long spins;

// Not static, not inlined, not cloned: each keeps its own frame and its plain name.
__attribute__((noinline, noclone)) void inner_spin(void) {
    while (!stop) spins++; /* @spin */
}

__attribute__((noinline, noclone)) void middle_spin(void) {
    inner_spin(); /* @inner_call */
    spins--;
}

__attribute__((noinline, noclone)) void outer_spin(void) {
    middle_spin(); /* @middle_call */
    spins--;
}

static void *spinner(void *arg) {
    (void)arg;
    printf("spinner %ld\nspinning\n", (long)syscall(SYS_gettid));
    outer_spin();
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    if (argc > 1 && strcmp(argv[1], "thread") == 0) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, spinner, NULL)) {
            perror("pthread_create");
            return 1;
        }
        for (;;) sleep(1000);
    }
    printf("spinner %d\nspinning\n", (int)getpid());
    outer_spin(); /* @outer_call */
    return 0;
}
