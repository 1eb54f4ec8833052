// recvcost measures what a receiving side costs per loopback message, the
// generators' work in a fan-out, two ways: edge-triggered epoll plus one
// recvmsg per ready socket (what bench/wsepoll.go does), and io_uring
// multishot recvmsg with a provided-buffer ring and DEFER_TASKRUN. Each
// round sends one 200-byte message to each of N connections (the "send"
// figure includes the receivers' wake-up, which loopback runs in the
// sender's system call), then receives them all ("recv"), with the
// SO_TIMESTAMPNS control message as the generators ask for. An experiment
// behind a decision (docs/performance.md: measured, not adopted).
//
//   apt-get install -y liburing-dev
//   gcc -O2 -o /tmp/recvcost bench/sendcost/recvcost.c -luring
//   ulimit -n 20000; /tmp/recvcost [N=9000] [mode: 0 epoll, 1 io_uring] [rounds=8]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int N;
static int *srv, *cli;
static char msg[200];
static double tcpu(void) {
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}
#define NBUF 16384
#define BUFSZ 512
#define BGID 1
static struct io_uring ring;
static struct io_uring_buf_ring *br;
static char *bufs;
static struct msghdr mh;
static long got;
static void sendall(void) {
	for (int i = 0; i < N; i++)
		if (send(srv[i], msg, sizeof msg, MSG_DONTWAIT | MSG_NOSIGNAL) != sizeof msg) {
			perror("send");
			exit(1);
		}
}
int main(int argc, char **argv) {
	N = argc > 1 ? atoi(argv[1]) : 9000;
	int mode = argc > 2 ? atoi(argv[2]) : 0;
	int rounds = argc > 3 ? atoi(argv[3]) : 8;
	memset(msg, 'x', sizeof msg);
	srv = calloc(N, sizeof(int));
	cli = calloc(N, sizeof(int));
	int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
	bind(l, (void *)&a, sizeof a);
	listen(l, 4096);
	socklen_t al = sizeof a;
	getsockname(l, (void *)&a, &al);
	int epfd = epoll_create1(0);
	if (mode == 1) {
		struct io_uring_params p = {0};
		p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
		p.cq_entries = 32768;
		if (io_uring_queue_init_params(4096, &ring, &p)) {
			perror("uring");
			return 1;
		}
		if (posix_memalign((void **)&br, 4096, NBUF * sizeof(struct io_uring_buf))) {
			return 1;
		}
		io_uring_buf_ring_init(br);
		struct io_uring_buf_reg reg = {
		    .ring_addr = (unsigned long)br, .ring_entries = NBUF, .bgid = BGID};
		int err = io_uring_register_buf_ring(&ring, &reg, 0);
		if (err) {
			fprintf(stderr, "bufring %d\n", err);
			return 1;
		}
		bufs = malloc((size_t)NBUF * BUFSZ);
		for (int i = 0; i < NBUF; i++)
			io_uring_buf_ring_add(br, bufs + (size_t)i * BUFSZ, BUFSZ, i,
					      io_uring_buf_ring_mask(NBUF), i);
		io_uring_buf_ring_advance(br, NBUF);
		memset(&mh, 0, sizeof mh);
		mh.msg_controllen = 64;
	}
	for (int i = 0; i < N; i++) {
		cli[i] = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in src = {.sin_family = AF_INET,
					  .sin_addr.s_addr = htonl(0x7f000002 + (i % 200))};
		bind(cli[i], (void *)&src, sizeof src);
		if (connect(cli[i], (void *)&a, sizeof a)) {
			perror("connect");
			return 1;
		}
		srv[i] = accept(l, NULL, NULL);
		setsockopt(srv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		setsockopt(cli[i], SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
		fcntl(cli[i], F_SETFL, O_NONBLOCK);
		if (mode == 0) {
			struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u32 = i};
			epoll_ctl(epfd, EPOLL_CTL_ADD, cli[i], &ev);
		} else {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			if (!sqe) {
				io_uring_submit(&ring);
				sqe = io_uring_get_sqe(&ring);
			}
			io_uring_prep_recvmsg_multishot(sqe, cli[i], &mh, 0);
			sqe->flags |= IOSQE_BUFFER_SELECT;
			sqe->buf_group = BGID;
			sqe->user_data = i;
		}
	}
	if (mode == 1)
		io_uring_submit_and_get_events(&ring);
	srand(1);
	for (int i = N - 1; i > 0; i--) {
		int j = rand() % (i + 1), t = srv[i];
		srv[i] = srv[j];
		srv[j] = t;
	}
	double ssum = 0, rsum = 0;
	char buf[65536];
	char oob[64];
	for (int r = 0; r < rounds; r++) {
		struct timespec g = {0, 250000000};
		nanosleep(&g, NULL);
		double c0 = tcpu();
		sendall();
		double c1 = tcpu();
		got = 0;
		if (mode == 0) {
			struct epoll_event ev[1024];
			int n;
			while (got < N) {
				n = epoll_wait(epfd, ev, 1024, 100);
				if (n <= 0)
					break;
				for (int k = 0; k < n; k++) {
					int fd = cli[ev[k].data.u32];
					struct iovec iov = {buf, sizeof buf};
					struct msghdr m = {.msg_iov = &iov,
							   .msg_iovlen = 1,
							   .msg_control = oob,
							   .msg_controllen = sizeof oob};
					ssize_t x = recvmsg(fd, &m, 0);
					if (x > 0) {
						got++;
					}
				}
			}
		} else {
			while (got < N) {
				io_uring_submit_and_get_events(&ring);
				struct io_uring_cqe *cqe;
				unsigned head, seen = 0, ret = 0;
				io_uring_for_each_cqe(&ring, head, cqe) {
					seen++;
					if (cqe->res > 0 && (cqe->flags & IORING_CQE_F_BUFFER)) {
						int bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
						struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(
						    bufs + (size_t)bid * BUFSZ, cqe->res, &mh);
						if (o)
							got++;
						io_uring_buf_ring_add(br, bufs + (size_t)bid * BUFSZ, BUFSZ,
								      bid, io_uring_buf_ring_mask(NBUF),
								      ret++);
					} else {
						fprintf(stderr, "cqe res %d flags %x\n", cqe->res,
							cqe->flags);
						exit(1);
					}
					if (!(cqe->flags & IORING_CQE_F_MORE)) {
						fprintf(stderr, "multishot ended\n");
						exit(1);
					}
				}
				io_uring_cq_advance(&ring, seen);
				io_uring_buf_ring_advance(br, ret);
				if (!seen) {
					struct io_uring_cqe *c2;
					io_uring_wait_cqe(&ring, &c2);
				}
			}
		}
		double c2 = tcpu();
		if (got != N) {
			fprintf(stderr, "got %ld\n", got);
		}
		ssum += (c1 - c0) / N;
		rsum += (c2 - c1) / N;
	}
	printf("%s send %.0f ns recv %.0f ns total %.0f ns per message\n", mode ? "uring" : "epoll",
	       ssum / rounds, rsum / rounds, (ssum + rsum) / rounds);
	return 0;
}
