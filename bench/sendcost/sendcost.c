// sendcost measures the CPU of one loopback TCP send to each of N idle
// connections, the server's work in a fan-out, three ways in interleaved
// rounds: send(2) per socket (what transports/wire.go does), io_uring with
// batches of 64 sends, and io_uring with registered files. The receiving
// sockets carry SO_TIMESTAMPNS and (unless told otherwise) an edge-triggered
// epoll registration, as the bench's generators do; they are drained between
// rounds, outside the measurement. It is an experiment behind a decision
// (docs/performance.md: io_uring was measured, not adopted), not part of
// `make bench`.
//
//   apt-get install -y liburing-dev
//   gcc -O2 -o /tmp/sendcost bench/sendcost/sendcost.c -luring
//   ulimit -n 20000; /tmp/sendcost [N=9000] [epoll=1] [gap_ms=250] [rounds=10] [congestion control]
//
// The gap between rounds matters: after more than the RTO (200 ms) of
// silence a receiver acknowledges at once (quick-ack mode), as the bench's
// one-event-at-a-time fan-out does.
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
static int epfd;
static struct io_uring ring;
static char msg[200];

static double tcpu(void) {
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}
static double twall(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void drain(void) {
	char buf[4096];
	for (int i = 0; i < N; i++)
		while (recv(cli[i], buf, sizeof buf, MSG_DONTWAIT) > 0) {
		}
	struct epoll_event ev[1024];
	while (epoll_wait(epfd, ev, 1024, 0) > 0) {
	}
}

static void round_send(void) {
	for (int i = 0; i < N; i++)
		if (send(srv[i], msg, sizeof msg, MSG_DONTWAIT | MSG_NOSIGNAL) != sizeof msg) {
			perror("send");
			exit(1);
		}
}

static void round_uring(int fixed) {
	for (int i = 0; i < N; i += 64) {
		int k = N - i < 64 ? N - i : 64;
		for (int j = 0; j < k; j++) {
			struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
			if (fixed) {
				io_uring_prep_send(sqe, i + j, msg, sizeof msg, MSG_DONTWAIT | MSG_NOSIGNAL);
				sqe->flags |= IOSQE_FIXED_FILE;
			} else
				io_uring_prep_send(sqe, srv[i + j], msg, sizeof msg,
						   MSG_DONTWAIT | MSG_NOSIGNAL);
		}
		io_uring_submit_and_wait(&ring, k);
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&ring, head, cqe) {
			if (cqe->res != sizeof msg) {
				fprintf(stderr, "uring res %d\n", cqe->res);
				exit(1);
			}
			seen++;
		}
		io_uring_cq_advance(&ring, seen);
	}
}

int main(int argc, char **argv) {
	N = argc > 1 ? atoi(argv[1]) : 9000;
	int useEpoll = argc > 2 ? atoi(argv[2]) : 1;
	int gapms = argc > 3 ? atoi(argv[3]) : 250;
	int rounds = argc > 4 ? atoi(argv[4]) : 10;
	const char *cc = argc > 5 ? argv[5] : NULL;
	memset(msg, 'x', sizeof msg);
	srv = calloc(N, sizeof(int));
	cli = calloc(N, sizeof(int));
	int l = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
	if (bind(l, (void *)&a, sizeof a) || listen(l, 4096)) {
		perror("listen");
		return 1;
	}
	socklen_t al = sizeof a;
	getsockname(l, (void *)&a, &al);
	epfd = epoll_create1(0);
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
		if (srv[i] < 0) {
			perror("accept");
			return 1;
		}
		setsockopt(srv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		if (cc)
			if (setsockopt(srv[i], IPPROTO_TCP, TCP_CONGESTION, cc, strlen(cc))) {
				perror("cc");
				return 1;
			}
		setsockopt(cli[i], SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
		fcntl(cli[i], F_SETFL, O_NONBLOCK);
		if (useEpoll) {
			struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.u32 = i};
			epoll_ctl(epfd, EPOLL_CTL_ADD, cli[i], &ev);
		}
	}
	// shuffle the server sockets so that order is not allocation order
	srand(1);
	for (int i = N - 1; i > 0; i--) {
		int j = rand() % (i + 1), t = srv[i];
		srv[i] = srv[j];
		srv[j] = t;
		t = cli[i];
		cli[i] = cli[j];
		cli[j] = t;
	}
	if (io_uring_queue_init(256, &ring, IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN)) {
		perror("uring");
		return 1;
	}
	if (io_uring_register_files(&ring, srv, N)) {
		perror("register");
		return 1;
	}
	const char *names[] = {"send", "uring", "uring-fixed"};
	double sum[3] = {0}, best[3] = {1e18, 1e18, 1e18}, wsum[3] = {0};
	for (int r = 0; r < rounds; r++) {
		for (int m = 0; m < 3; m++) {
			drain();
			struct timespec g = {gapms / 1000, (gapms % 1000) * 1000000L};
			nanosleep(&g, NULL);
			double c0 = tcpu(), w0 = twall();
			if (m == 0)
				round_send();
			else
				round_uring(m == 2);
			double c = (tcpu() - c0) / N, w = (twall() - w0) / N;
			sum[m] += c;
			wsum[m] += w;
			if (c < best[m])
				best[m] = c;
		}
	}
	for (int m = 0; m < 3; m++)
		printf("%-12s cpu/send mean %.0f ns best %.0f ns wall mean %.0f ns\n", names[m],
		       sum[m] / rounds, best[m], wsum[m] / rounds);
	return 0;
}
