// discoveryd: placeholder until its issue lands.
#include <iostream>
int main() {
  std::cerr << "discoveryd: not implemented yet\n";
  return 1;
}
