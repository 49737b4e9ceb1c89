/* evserver: the server binary. Everything lives in the core library; see core/master.c. */
int evs__main(int argc, char **argv);
int main(int argc, char **argv) { return evs__main(argc, argv); }
