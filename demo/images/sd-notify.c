/* sd-notify: send systemd notification lines ("READY=1", "STATUS=...") to $NOTIFY_SOCKET.
 * Built statically so that an image made of busybox can signal readiness. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) {
        fprintf(stderr, "sd-notify: NOTIFY_SOCKET is not set\n");
        return 1;
    }
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof addr.sun_path) return 1;
    memcpy(addr.sun_path, path, len);
    if (addr.sun_path[0] == '@') addr.sun_path[0] = 0;
    char msg[4096] = "";
    for (int i = 1; i < argc; i++) {
        strncat(msg, argv[i], sizeof msg - strlen(msg) - 2);
        strcat(msg, "\n");
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&addr,
                         offsetof(struct sockaddr_un, sun_path) + len) < 0) {
        perror("sd-notify");
        return 1;
    }
    return 0;
}
