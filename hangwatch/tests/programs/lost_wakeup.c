// lost_wakeup: a consumer waits (untimed pthread_cond_wait) for an item that its only
// producer never sends: the producer checks the flag without the lock, decides there is
// nothing to do and exits. Main joins the consumer. No thread can make progress again,
// and nothing outside the process can wake one: glibc installs no signal handler a
// sender could use, the condvar is process-private, main's join waits on the consumer.
//
// stdout: "pid <pid>", "consumer <tid>", "producer_exited", then "ready".
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t item = PTHREAD_COND_INITIALIZER;
static pthread_barrier_t waiting;
static int have_item;
static int shutting_down = 1; /* the bug: the producer reads a stale "shutting down" */
static volatile pid_t consumer_tid;

static void *consumer(void *arg) {
    (void)arg;
    consumer_tid = (pid_t)syscall(SYS_gettid);
    pthread_mutex_lock(&lock);
    pthread_barrier_wait(&waiting);
    while (!have_item) pthread_cond_wait(&item, &lock); /* consumer waits */
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *producer(void *arg) {
    (void)arg;
    if (shutting_down) return NULL; /* exits without producing */
    pthread_mutex_lock(&lock);
    have_item = 1;
    pthread_cond_signal(&item);
    pthread_mutex_unlock(&lock);
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("pid %d\n", (int)getpid());
    pthread_barrier_init(&waiting, NULL, 2);
    pthread_t c, p;
    if (pthread_create(&c, NULL, consumer, NULL)) return 1;
    pthread_setname_np(c, "consumer");
    pthread_barrier_wait(&waiting);
    printf("consumer %d\n", (int)consumer_tid);
    if (pthread_create(&p, NULL, producer, NULL)) return 1;
    pthread_join(p, NULL);
    printf("producer_exited\nready\n");
    pthread_join(c, NULL); /* main joins */
    return 0;
}
