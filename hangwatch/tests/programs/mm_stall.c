// The mm-lock stall of a filesystem freeze: one thread write-faults a clean MAP_SHARED
// page of a file on the (frozen) filesystem and sleeps in the freeze protection holding
// its VMA; another calls mprotect() on the mapping and waits for it holding the mm lock
// for writing. From then on every reader of the process's memory, maps or command line
// blocks (cat /proc/PID/cmdline hangs) until the thaw.
//
// Prints "pid N", maps the file given as argv[1], then waits for "go" on stdin (sent
// after the freeze), starts the two threads, prints "stalled" and joins them.
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

static char *map;
static const size_t len = 1 << 20;

static void *faulter(void *arg) {
    (void)arg;
    map[4096] = 1; /* write fault on a frozen filesystem */
    return NULL;
}

static void *protector(void *arg) {
    (void)arg;
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
    printf("pid %d\n", getpid());
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    pthread_t a, b;
    pthread_create(&a, NULL, faulter, NULL);
    usleep(200 * 1000);
    pthread_create(&b, NULL, protector, NULL);
    usleep(200 * 1000);
    printf("stalled\n");
    fflush(stdout);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return 0;
}
