// fuse_stall: a minimal FUSE server over the raw /dev/fuse protocol (no libfuse) that
// serves one read-only file, a copy of FILE, at MOUNTPOINT/<basename of FILE>, and can be
// told to stop answering: a stalled mount, as a hung FUSE daemon or a dead network
// filesystem leaves it. Every open, read or lookup of the file then waits for an answer
// that never comes (killably: SIGKILL ends the waiter, and closing /dev/fuse, i.e. this
// process exiting, aborts the connection and fails every waiter with ENOTCONN).
//
// Attribute and entry timeouts are 0, so the kernel asks again at each lookup and stat.
//
// Two ways to stall. By default the server stops reading /dev/fuse: requests stay queued
// in the kernel, and their waiters can be killed (SIGKILL ends the wait). With "take" it
// goes on reading requests but answers none: a server stuck while handling them (a dead
// network under sshfs). Their waiters are then past the killable part of the wait: the
// kernel waits out a request a server has taken *uninterruptibly*, until the answer or
// the connection's abort.
//
// stdout: "ready" once the kernel's INIT is answered (the mount is usable), "stalled"
// once told to stall. Stalls on a line "stall" on stdin or on SIGUSR1; exits on EOF of
// stdin. Needs root (mount(2)).
// Usage: fuse_stall MOUNTPOINT FILE [take]
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define ROOT_ID 1
#define FILE_ID 2

static volatile sig_atomic_t stall;
static char *content;
static size_t content_len;
static const char *file_name;

static void on_usr1(int sig) {
    (void)sig;
    stall = 1;
}

static pthread_t server;

static void *read_stdin(void *arg) {
    (void)arg;
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        // The signal takes the server out of its read of /dev/fuse at once.
        if (strncmp(line, "stall", 5) == 0) pthread_kill(server, SIGUSR1);
    }
    // The test is gone: exiting closes /dev/fuse, which aborts the connection.
    _exit(0);
}

static void reply(int fd, uint64_t unique, int error, const void *data, size_t len) {
    struct fuse_out_header out = {
        .len = (uint32_t)(sizeof out + len),
        .error = -error,
        .unique = unique,
    };
    struct iovec iov[2] = {{&out, sizeof out}, {(void *)data, len}};
    if (writev(fd, iov, len ? 2 : 1) < 0 && errno != ENOENT)
        fprintf(stderr, "fuse_stall: reply: %s\n", strerror(errno));
}

static void fill_attr(uint64_t id, struct fuse_attr *attr) {
    memset(attr, 0, sizeof *attr);
    attr->ino = id;
    if (id == ROOT_ID) {
        attr->mode = S_IFDIR | 0755;
        attr->nlink = 2;
    } else {
        attr->mode = S_IFREG | 0755;
        attr->nlink = 1;
        attr->size = content_len;
        attr->blocks = (content_len + 511) / 512;
    }
    attr->blksize = 4096;
}

int main(int argc, char **argv) {
    if (argc != 3 && !(argc == 4 && strcmp(argv[3], "take") == 0)) {
        fprintf(stderr, "usage: fuse_stall MOUNTPOINT FILE [take]\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mountpoint = argv[1];
    file_name = strrchr(argv[2], '/') ? strrchr(argv[2], '/') + 1 : argv[2];

    FILE *src = fopen(argv[2], "rb");
    if (!src) {
        perror("fuse_stall: open FILE");
        return 1;
    }
    fseek(src, 0, SEEK_END);
    content_len = (size_t)ftell(src);
    fseek(src, 0, SEEK_SET);
    content = malloc(content_len ? content_len : 1);
    if (!content || fread(content, 1, content_len, src) != content_len) {
        perror("fuse_stall: read FILE");
        return 1;
    }
    fclose(src);

    int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        perror("fuse_stall: open /dev/fuse");
        return 1;
    }
    char options[128];
    snprintf(options, sizeof options, "fd=%d,rootmode=40000,user_id=0,group_id=0", fd);
    if (mount("fuse_stall", mountpoint, "fuse", MS_NOSUID | MS_NODEV, options) < 0) {
        perror("fuse_stall: mount");
        return 1;
    }

    struct sigaction sa = {.sa_handler = on_usr1}; // no SA_RESTART: the read returns EINTR
    sigaction(SIGUSR1, &sa, NULL);
    server = pthread_self();
    pthread_t input;
    pthread_create(&input, NULL, read_stdin, NULL);

    size_t size = (1 << 20) + FUSE_MIN_READ_BUFFER;
    char *buf = malloc(size);
    for (;;) {
        if (stall) break;
        ssize_t n = read(fd, buf, size);
        if (n < 0) {
            if (errno == EINTR || errno == ENOENT || errno == EAGAIN) continue;
            if (errno == ENODEV) return 0; // unmounted
            perror("fuse_stall: read /dev/fuse");
            return 1;
        }
        struct fuse_in_header *in = (struct fuse_in_header *)buf;
        void *arg = buf + sizeof *in;
        switch (in->opcode) {
        case FUSE_INIT: {
            struct fuse_init_in *init = arg;
            struct fuse_init_out out = {
                .major = FUSE_KERNEL_VERSION,
                .minor = init->minor < FUSE_KERNEL_MINOR_VERSION ? init->minor
                                                                  : FUSE_KERNEL_MINOR_VERSION,
                .max_readahead = init->max_readahead,
                .max_background = 16,
                .congestion_threshold = 12,
                .max_write = 1 << 20,
                .time_gran = 1,
            };
            reply(fd, in->unique, 0, &out, sizeof out);
            printf("ready\n");
            break;
        }
        case FUSE_LOOKUP: {
            const char *name = arg;
            if (in->nodeid != ROOT_ID || strcmp(name, file_name) != 0) {
                reply(fd, in->unique, ENOENT, NULL, 0);
                break;
            }
            struct fuse_entry_out out = {.nodeid = FILE_ID, .generation = 1};
            fill_attr(FILE_ID, &out.attr);
            reply(fd, in->unique, 0, &out, sizeof out);
            break;
        }
        case FUSE_GETATTR: {
            struct fuse_attr_out out = {0};
            fill_attr(in->nodeid, &out.attr);
            reply(fd, in->unique, 0, &out, sizeof out);
            break;
        }
        case FUSE_OPEN: {
            struct fuse_open_out out = {.open_flags = FOPEN_KEEP_CACHE};
            reply(fd, in->unique, in->nodeid == FILE_ID ? 0 : EISDIR, &out, sizeof out);
            break;
        }
        case FUSE_READ: {
            struct fuse_read_in *read_in = arg;
            size_t off = read_in->offset < content_len ? (size_t)read_in->offset : content_len;
            size_t len = content_len - off < read_in->size ? content_len - off : read_in->size;
            reply(fd, in->unique, 0, content + off, len);
            break;
        }
        case FUSE_RELEASE:
        case FUSE_RELEASEDIR:
        case FUSE_FLUSH:
            reply(fd, in->unique, 0, NULL, 0);
            break;
        case FUSE_FORGET:
        case FUSE_BATCH_FORGET:
        case FUSE_INTERRUPT:
            break; // no answer expected
        default: // GETXATTR, ACCESS, OPENDIR, STATFS...: "not implemented", asked no more
            reply(fd, in->unique, ENOSYS, NULL, 0);
            break;
        }
    }
    printf("stalled\n");
    if (argc == 4) // take: read every request, answer none
        for (;;)
            if (read(fd, buf, size) < 0 && errno == ENODEV) return 0;
    // Holds /dev/fuse open without reading it: every request waits, until this process
    // exits (the test kills it; the connection is then aborted).
    for (;;) pause();
}
