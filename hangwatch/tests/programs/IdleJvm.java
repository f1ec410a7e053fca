// An idle JVM: a fixed thread pool waiting for work, main parked in join() on a thread
// that waits for ever on a latch nobody counts down. Run in source-file mode
// (`java IdleJvm.java`). stdout: "pid <pid>", then "ready".
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;

public class IdleJvm {
    public static void main(String[] args) throws Exception {
        ExecutorService pool = Executors.newFixedThreadPool(4);
        for (int i = 0; i < 4; i++) {
            pool.submit(() -> 1).get();
        }
        CountDownLatch never = new CountDownLatch(1);
        Thread waiter = new Thread(() -> {
            try {
                never.await();
            } catch (InterruptedException e) {
                return;
            }
        }, "waiter");
        waiter.start();
        System.out.println("pid " + ProcessHandle.current().pid());
        System.out.println("ready");
        System.out.flush();
        waiter.join();
    }
}
