// The mm-lock stall of a filesystem freeze: one thread write-faults a clean MAP_SHARED
// page of a file on the (frozen) filesystem and sleeps in the freeze protection holding
// its VMA; another calls mprotect() on the mapping and waits for it holding the mm lock
// for writing. From then on every reader of the process's memory, maps or command line
// blocks (cat /proc/PID/cmdline hangs) until the thaw.
//
// Prints "pid N", maps the file given as argv[1], starts the two threads (each waiting for
// its turn), then waits for "go" on stdin (sent after the freeze), lets them go one after
// the other, prints "stalled" and joins them. Both threads exist before the fault: before
// Linux 6.4 (no per-VMA locks) a page fault holds the mm lock, and creating a thread (an
// mmap of its stack) after it would block main itself.
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

static char *map;
static const size_t len = 1 << 20;
/* One pipe per thread: a byte written is its turn. */
static int turn_a[2], turn_b[2];

static void wait_turn(int fd) {
    char c;
    while (read(fd, &c, 1) != 1) {
    }
}

static void *faulter(void *arg) {
    (void)arg;
    wait_turn(turn_a[0]);
    map[4096] = 1; /* write fault on a frozen filesystem */
    return NULL;
}

static void *protector(void *arg) {
    (void)arg;
    wait_turn(turn_b[0]);
    mprotect(map, len, PROT_READ); /* waits for the faulter, holding the mm lock */
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    int fd = open(argv[1], O_RDWR | O_CREAT, 0644);
    if (fd < 0 || ftruncate(fd, len)) { perror(argv[1]); return 1; }
    map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 1; }
    volatile char c = map[4096]; /* read-fault it in: a clean page */
    (void)c;
    msync(map, len, MS_SYNC);
    if (pipe(turn_a) || pipe(turn_b)) { perror("pipe"); return 1; }
    pthread_t a, b;
    pthread_create(&a, NULL, faulter, NULL);
    pthread_create(&b, NULL, protector, NULL);
    printf("pid %d\n", getpid());
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    if (write(turn_a[1], "a", 1) != 1) return 1;
    usleep(200 * 1000);
    if (write(turn_b[1], "b", 1) != 1) return 1;
    usleep(200 * 1000);
    printf("stalled\n");
    fflush(stdout);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return 0;
}
